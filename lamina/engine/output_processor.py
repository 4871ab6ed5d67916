"""After the model has sampled: append each token, detokenize, check the stops, free what finished, assemble outputs."""
from __future__ import annotations

from lamina.engine.outputs import CompletionOutput, OutputKind, RequestOutput, TokenLogprob
from lamina.engine.prompt_logprobs import PromptScores, record
from lamina.engine.request import Request
from lamina.engine.sampler import SampleResult
from lamina.engine.scheduler import Scheduler
from lamina.engine.sequence import Sequence
from lamina.engine.tokenizer import Tokenizer


def find_stop(text: str, num_new_chars: int, stops: list[str]) -> tuple[int, str] | None:
    """The earliest stop string in `text` among those that end in its last `num_new_chars` characters.

    Returns (where it starts, which stop); of two starting at the same place, the shorter (it completes first).
    """
    found: tuple[int, str] | None = None
    for stop in stops:
        at = text.find(stop, max(0, len(text) - num_new_chars - len(stop) + 1))
        if at >= 0 and (found is None or at < found[0] or (at == found[0] and len(stop) < len(found[1]))):
            found = (at, stop)
    return found


def stop_hold(stops: list[str]) -> int:
    """Characters of text held back while a sample runs: a stop string could still begin in them."""
    return max((len(s) for s in stops), default=1) - 1


class OutputProcessor:
    """`process(seqs, result, requests)`: the postprocess verb of a step; `output(request)` builds a RequestOutput."""

    def __init__(self, tokenizer: Tokenizer, scheduler: Scheduler, eos_token_ids: set[int], max_seq_len: int) -> None:
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.eos_token_ids = eos_token_ids
        self.max_seq_len = max_seq_len  # prompt + output tokens a sequence may reach (context and KV pool)

    def process(self, seqs: list[Sequence], result: SampleResult, requests: dict[str, Request]) -> list[RequestOutput]:
        """Append result's row i to seqs[i] (a sequence that speculated has several rows, in order: those after the
        one that finished it are dropped); return the outputs of the touched requests, dropping finished ones."""
        touched: dict[str, dict[int, Sequence]] = {}
        for row, seq in enumerate(seqs):
            if seq.finish_reason is None:
                self._append(seq, row, result)
            touched.setdefault(seq.request_id, {})[seq.seq_id] = seq
        outputs = []
        for request_id, changed in touched.items():
            request = requests[request_id]
            out = self.output(request, list(changed.values()))
            if out is not None:
                outputs.append(out)
            if request.finished:
                del requests[request_id]
        return outputs

    def record_prompt_logprobs(self, scores: list[PromptScores]) -> None:
        """Store the prompt logprobs a forward computed (prefill chunks of requests with prompt_logprobs)."""
        record(scores, self.tokenizer.id_to_token)

    def abort(self, request: Request) -> RequestOutput | None:
        """Finish every running sample of `request` with "abort" and free its blocks; its last output."""
        request.aborted = True
        changed = [seq for seq in request.seqs if not seq.is_finished]
        for seq in changed:
            seq.finish_reason = "abort"
            self.scheduler.finish(seq)
        return self.output(request, changed)

    def output(self, request: Request, changed: list[Sequence]) -> RequestOutput | None:
        """What `request` reports now, by its OutputKind; `changed`: its samples touched in this step."""
        kind = request.output_kind
        if kind is OutputKind.FINAL_ONLY and not request.finished:
            return None
        hold = stop_hold(request.params.stop)
        if kind is OutputKind.DELTA:
            outputs = [_delta(seq, hold) for seq in sorted(changed, key=lambda s: s.index)]
        else:
            outputs = [_cumulative(seq, hold) for seq in sorted(request.seqs, key=lambda s: s.index)]
        prompt_logprobs = request.seqs[0].prompt_logprobs
        if kind is OutputKind.DELTA and prompt_logprobs is not None:  # deltas carry them once, in the first output
            prompt_logprobs, request.prompt_logprobs_sent = (None if request.prompt_logprobs_sent else prompt_logprobs,
                                                             True)
        return RequestOutput(request.request_id, request.prompt, request.prompt_token_ids, outputs,
                             request.finished, request.seqs[0].num_cached_tokens,
                             None if prompt_logprobs is None else list(prompt_logprobs),
                             sum(seq.num_draft_tokens for seq in request.seqs),
                             sum(seq.num_accepted_tokens for seq in request.seqs))

    def _append(self, seq: Sequence, row: int, result: SampleResult) -> None:
        if seq.params.max_tokens == 0:  # the prompt is scored (prompt_logprobs); nothing is generated
            seq.finish_reason = "length"
            self.scheduler.finish(seq)
            return
        token = result.token_ids[row]
        seq.token_ids.append(token)
        if seq.matcher is not None:
            seq.matcher.consume_token(token)
        if seq.logprobs is not None and result.logprobs is not None:
            k = seq.params.logprobs or 0
            top = {} if not k else dict(zip(result.top_ids[row][:k], result.top_logprobs[row][:k]))  # type: ignore[index]
            seq.logprobs.append(TokenLogprob(token, self.tokenizer.id_to_token(token), result.logprobs[row], top))
        self._check_stop(seq, token)
        if seq.finish_reason is not None:
            if not isinstance(seq.stop_reason, str):
                seq.text += seq.detokenizer.flush()
            self.scheduler.finish(seq)

    def _check_stop(self, seq: Sequence, token: int) -> None:
        params = seq.params
        if token in params.stop_token_ids or (token in self.eos_token_ids and not params.ignore_eos):
            seq.finish_reason, seq.stop_reason = "stop", token
            return
        delta = seq.detokenizer.add(token)
        seq.text += delta
        if delta and params.stop:
            found = find_stop(seq.text, len(delta), params.stop)
            if found is not None:
                at, stop = found
                seq.text = seq.text[: at + len(stop)] if params.include_stop_str_in_output else seq.text[:at]
                seq.finish_reason, seq.stop_reason = "stop", stop
                return
        if seq.matcher is not None and seq.matcher.is_stopped():  # the grammar is complete: nothing else may follow
            seq.finish_reason = "stop"
            return
        if seq.num_output_tokens >= params.max_tokens or len(seq.token_ids) >= self.max_seq_len:
            seq.finish_reason = "length"


def _cumulative(seq: Sequence, hold: int) -> CompletionOutput:
    text = seq.text if seq.finish_reason or not hold else seq.text[: max(0, len(seq.text) - hold)]
    logprobs = None if seq.logprobs is None else list(seq.logprobs)
    return CompletionOutput(seq.index, text, seq.output_token_ids, logprobs, seq.finish_reason, seq.stop_reason)


def _delta(seq: Sequence, hold: int) -> CompletionOutput:
    """What seq added since its last delta; text up to `hold` characters from the end stays back until it finishes."""
    sent = seq.num_emitted_tokens
    token_ids = seq.token_ids[seq.num_prompt_tokens + sent :]
    logprobs = None if seq.logprobs is None else seq.logprobs[sent:]
    end = len(seq.text) if seq.finish_reason else max(seq.num_emitted_chars, len(seq.text) - hold)
    text = seq.text[seq.num_emitted_chars : end]
    seq.num_emitted_tokens, seq.num_emitted_chars = sent + len(token_ids), end
    return CompletionOutput(seq.index, text, token_ids, logprobs, seq.finish_reason, seq.stop_reason)
