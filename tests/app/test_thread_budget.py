"""The threads and decoding settings a multi-worker host gives its processes (`app.host.thread_budget`)."""

from __future__ import annotations

from app.host import FRONT_END_INLINE_PIXELS, thread_budget


def test_front_ends_with_a_core_each_decode_small_requests_on_their_loop_and_photos_in_threads() -> None:
    front_end, inference = thread_budget(cpus=4, workers=4, environ={})
    assert front_end == {"SERVE_DECODE_THREADS": "2", "SERVE_DECODE_INLINE_PIXELS": str(FRONT_END_INLINE_PIXELS)}
    assert 16 * 64 * 64 <= FRONT_END_INLINE_PIXELS < 640 * 427  # 16 digits a request inline; a photo in a thread
    assert inference == {}


def test_front_ends_with_cores_to_spare_keep_decoding_in_threads() -> None:
    front_end, _ = thread_budget(cpus=16, workers=2, environ={})
    assert front_end == {"SERVE_DECODE_THREADS": "8"}


def test_settings_given_by_the_operator_are_kept() -> None:
    environ = {"SERVE_DECODE_THREADS": "3", "SERVE_DECODE_INLINE_PIXELS": "0"}
    front_end, _ = thread_budget(cpus=4, workers=4, environ=environ)
    assert front_end == {}


def test_inference_processes_on_the_cpu_split_the_cores_between_them() -> None:
    _, inference = thread_budget(cpus=16, workers=16, environ={}, cpu_inference=2)
    assert inference == {"SERVE_INTRA_OP_THREADS": "8"}
    _, inference = thread_budget(cpus=16, workers=16, environ={"SERVE_INTRA_OP_THREADS": "4"}, cpu_inference=2)
    assert inference == {}  # the operator's
