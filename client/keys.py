"""Set keys kept on this machine, and the `login` key slots on the server.

A set on a server is encrypted with a random master key. The client keeps that
key in $IRONCORE_HOME/keys/<volume id>.key (0600) so that scheduled backups run
unattended (the seed's client kept its encryption key the same way). The key
reaches a machine either because the set was made there, or because the
account password opens the set's `login` slot when the machine logs in."""
import os

from client import config
from client.remote import ServerClient
from ironfs.errors import WrongSecret
from ironfs.format import crypto
from ironfs.format.fsutil import publish, tmp_name


def key_path(volume_id: bytes) -> str:
    folder = os.path.join(config.home(), "keys")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return os.path.join(folder, volume_id.hex() + ".key")


def save_key(volume_id: bytes, master: crypto.MasterKey) -> None:
    path = key_path(volume_id)
    tmp = tmp_name(os.path.dirname(path))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(master.raw.hex())
    publish(tmp, path)


def load_key(volume_id: bytes) -> crypto.MasterKey | None:
    try:
        with open(key_path(volume_id)) as f:
            return crypto.MasterKey(bytes.fromhex(f.read().strip()))
    except FileNotFoundError:
        return None


def open_volume_key(volume, read_secret) -> None:
    """Give `volume` the key this machine keeps for it, else the one the secret
    `read_secret()` returns opens (which is then kept)."""
    master = load_key(volume.id)
    if master is None:
        volume.unlock(read_secret())
        save_key(volume.id, volume.key)
    else:
        volume.use_key(master)


def sync_login_slots(state: dict, password: str) -> tuple[list[str], list[str]]:
    """At login, with the password at hand: take the keys of sets whose `login` slot
    it opens, and re-wrap under it the slots that still hold an older password
    (after an administrator's reset) for sets whose key this machine has.
    Returns (sets whose key was taken, sets re-wrapped)."""
    owner = ServerClient(state["url"], state["cert_pem"], auth=(state["account"], password))
    taken, rewrapped = [], []
    try:
        for summary in owner.call("GET", "/api/v1/sets").json():
            if "login" not in summary["slots"]:
                continue
            volume = owner.call("GET", f"/api/v1/sets/{summary['name']}").json()["volume"]
            volume_id = bytes.fromhex(volume["id"])
            slot = next(s for s in volume["slots"] if s["name"] == "login")
            have = load_key(volume_id)
            try:
                master, _ = crypto.open_slots([slot], password.encode(), volume_id)
            except WrongSecret:
                if have is None:
                    continue
                kdf = {k: v for k, v in slot["kdf"].items() if k != "salt"}
                owner.call("PUT", f"/api/v1/sets/{summary['name']}/slots/login",
                           json=crypto.make_slot("login", password.encode(), have.raw, volume_id, kdf))
                rewrapped.append(summary["name"])
                continue
            if have is None:
                save_key(volume_id, crypto.MasterKey(master))
                taken.append(summary["name"])
    finally:
        owner.close()
    return taken, rewrapped
