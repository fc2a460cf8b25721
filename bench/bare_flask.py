"""Goal 2's baseline: a bare Flask app answering ``{"status": "ok"}`` (served as ``bench.bare_flask:app``)."""

from flask import Flask, Response, jsonify

app = Flask("bare")


@app.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")
