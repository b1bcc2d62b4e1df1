"""Builds the optional cffi extension `ironfs._native` from native/ (API mode, out of line)."""
from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder"])
