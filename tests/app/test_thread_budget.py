"""The threads, decoding and allocator settings a multi-worker host gives its processes (`app.host`)."""

from __future__ import annotations

from app.host import FRONT_END_INLINE_PIXELS, allocator_env, thread_budget


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


def test_every_process_keeps_freed_image_buffers_for_reuse_unless_the_operator_tuned_malloc() -> None:
    assert allocator_env({}) == {
        "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
        "MALLOC_TRIM_THRESHOLD_": str(64 << 20),
    }
    assert allocator_env({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}) != {}  # not about malloc
    for own in (
        {"MALLOC_TRIM_THRESHOLD_": "0"},
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
    ):
        assert allocator_env(own) == {}, own  # theirs as given: one of ours beside it would change what it does
