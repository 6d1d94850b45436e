"""What a run produced (:class:`Result`), how it is scored (:mod:`.evaluate`)
and written as a result folder."""

from .result import Result, result_to_json, save_result, steady_seconds_per_iteration

__all__ = ["Result", "result_to_json", "save_result", "steady_seconds_per_iteration"]
