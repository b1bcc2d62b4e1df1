"""JSON answers, the one shape every API response and error takes."""
import json

from werkzeug.wrappers import Response


def json_response(data, status: int = 200, headers=None) -> Response:
    return Response(json.dumps(data), status=status, mimetype="application/json", headers=headers)
