"""The shared readiness board outlives no app: a check answering after the app closed finds nothing to write."""

from __future__ import annotations

from service.readiness import HealthBoard


def test_a_board_records_what_a_worker_saw_for_every_other_mapping(tmp_path):
    writer, reader = HealthBoard(tmp_path / "health"), HealthBoard(tmp_path / "health")
    writer.set("bao", "degraded", "provider_timeout")
    assert reader.get("bao") == ("degraded", "provider_timeout")
    writer.set("bao", "ok", None)
    assert reader.get("bao") == ("ok", None)
    writer.close()
    reader.close()


def test_a_closed_board_ignores_a_late_answer_instead_of_raising(tmp_path):
    board = HealthBoard(tmp_path / "health")
    board.set("bao", "ok", None)
    board.close()
    # A background check that was still waiting on a hung manager answers now.
    board.set("bao", "down", "provider_error")
    assert board.get("bao") is None
    board.close()  # twice is harmless
