"""The checkpoint saver (tapa_scale/train/saver.py) leans on three megatron-core internals that are not
public API. Each test names the internal it pins, so that an upgrade that moves one fails here, in one
line, instead of as a hung or half-written save."""
import inspect
from collections import deque

from megatron.core.dist_checkpointing.strategies import async_utils
from megatron.core.dist_checkpointing.strategies import filesystem_async as fa


def test_writer_results_queue_is_a_module_global_read_on_first_use():
    """saver._results_queue_dies_with_us sets filesystem_async._results_queue before megatron would
    start its own Manager: that only works while the global exists and is what the getter reads."""
    assert hasattr(fa, "_results_queue"), "filesystem_async._results_queue is gone"
    assert "_results_queue" in fa._get_write_results_queue.__code__.co_names, \
        "filesystem_async._get_write_results_queue no longer reads the _results_queue global"


def test_write_function_takes_rank_buckets_queue_and_buckets_start_with_their_path():
    """saver._then_hash wraps AsyncRequest.async_fn and reads args[1] as the write buckets, each
    starting with the file it writes."""
    params = list(inspect.signature(fa.FileSystemWriterAsync.write_preloaded_data_multiproc).parameters)
    assert params[-3:] == ["rank", "write_buckets", "global_results_queue"], params
    source = inspect.getsource(fa.FileSystemWriterAsync.get_save_function_and_args)
    assert "self.write_buckets, self.results_queue]" in source, "the async_fn argument list changed"
    assert fa.WriteBucket.__args__[0].__name__ == "Path", fa.WriteBucket
    fields = async_utils.AsyncRequest._fields
    assert fields[:2] == ("async_fn", "async_fn_args") and hasattr(async_utils.AsyncRequest, "_replace"), fields


def test_calls_queue_keeps_active_calls_whose_callers_can_be_aborted():
    """Saver.close(abort=True) walks AsyncCallsQueue.async_calls and closes each call's async_caller
    with abort=True, then clears the deque."""
    queue = async_utils.AsyncCallsQueue()
    assert isinstance(queue.async_calls, deque), type(queue.async_calls)
    assert "async_caller" in async_utils._ActiveAsyncRequest._fields, async_utils._ActiveAsyncRequest._fields
    for caller in (async_utils.TemporalAsyncCaller, async_utils.PersistentAsyncCaller):
        assert "abort" in inspect.signature(caller.close).parameters, caller
