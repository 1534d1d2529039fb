"""Push a saved model folder (weights, config with auto_map, model code, preprocessing config, README card) to the Hub.

Failure policy. The local folder is only ever read. When the push fails, `HubPushError` says that the local output is
intact, where it is, and the exact command that retries the push; the token never appears in it (nor in our logs).

Retries. huggingface_hub 2.4 already retries the preupload, LFS batch, LFS PUT and verify calls (5xx, 408/429,
timeouts, lost connections; 5 tries with backoff), but not `create_repo`, the README validation or the commit itself.
We retry the whole `create_repo` + `upload_folder` on those transient errors `retries` more times: this is safe because
a repeated upload is idempotent (files already on the Hub are skipped as unchanged, and an upload with nothing new
makes no commit). Authentication and other 4xx errors are not retried.

Timeouts. huggingface_hub sends the commit with no timeout at all, so a stalled server would hang the push forever;
`timeout` bounds how long any single request may wait for the server (connect, read, write).
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import time
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, get_session, get_token
from huggingface_hub.errors import HfHubHTTPError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 300.0  # seconds without progress on one request; generous for large commits, finite for hangs
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TRANSIENT_ERRORS = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)


class HubPushError(RuntimeError):
    """A push to the Hub failed; the message says the local output is intact and how to retry. `transient`: whether
    it failed on a transient error (5xx, timeout, lost connection) after every retry."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


def push_folder_to_hub(
    folder,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    endpoint: str | None = None,
    retries: int = 2,
    retry_wait: float = 2.0,
    timeout: float | None = DEFAULT_TIMEOUT,
    ignore_patterns: list[str] | None = None,
) -> str:
    """Create `repo_id` if needed and upload every file of `folder` in one commit; returns the commit URL.

    Args:
        folder: a folder written by `save_pretrained` (+ image processor + README.md card).
        repo_id: "user/name" or "org/name".
        token: a write token; defaults to `HF_TOKEN` or the token saved by `hf auth login`. Never printed.
        private: create the repo private (ignored if it exists).
        revision: a branch to push to (created from main if missing); the default branch when None.
        endpoint: the Hub's URL; defaults to `HF_ENDPOINT` or https://huggingface.co.
        retries: further attempts after a transient failure (5xx, timeout, lost connection), waiting
            `retry_wait`, then twice as long, and so on.
        timeout: seconds one request may wait for the server; None keeps huggingface_hub's (unbounded) default.
        ignore_patterns: glob patterns of files not to upload (e.g. a training run's `checkpoint-*` folders); the
            retry command excludes them too.

    Raises:
        HubPushError: the push failed; the local folder was not modified.
        FileNotFoundError: `folder` does not exist.
    """
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"Cannot push {folder} to the Hub: no such folder. Save the model there first.")
    token = token or get_token()
    api = HfApi(endpoint=endpoint, token=token)
    retry_command = _retry_command(folder, repo_id, private=private, revision=revision, exclude=ignore_patterns)
    for attempt in range(retries + 1):
        try:
            with _request_timeout(timeout):
                api.create_repo(repo_id, private=private, exist_ok=True)
                if revision is not None:
                    api.create_branch(repo_id, branch=revision, exist_ok=True)
                return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                         commit_message="Upload distilled DeiT with hf-deit",
                                         ignore_patterns=ignore_patterns).commit_url  # fmt: skip
        except Exception as error:
            transient = _is_transient(error)
            if not transient or attempt == retries:
                # from None: the original stays out of the traceback, which could print a URL or header.
                raise _push_error(error, folder, repo_id, token, retry_command, transient, attempts=attempt + 1,
                                  ignore=ignore_patterns) from None  # fmt: skip
            wait = retry_wait * 2**attempt
            logger.warning("Push of %s to %s failed (%s); retrying in %.0f s [%d/%d].", folder, repo_id,
                           _redact(_describe(error), token), wait, attempt + 1, retries)  # fmt: skip
            time.sleep(wait)
    raise AssertionError("unreachable")


def _push_error(error, folder, repo_id, token, retry_command, transient, attempts, ignore=None) -> HubPushError:
    status = _status_code(error)
    if status in (401, 403):
        cause = (
            f"the Hub rejected the token (HTTP {status}). Set HF_TOKEN to a token with write access to {repo_id} "
            "(https://huggingface.co/settings/tokens) or run `hf auth login`."
        )
    elif transient:
        cause = f"the Hub could not be reached or failed ({_describe(error)}) after {attempts} attempt(s)."
    else:
        cause = f"{_describe(error)}."
    message = (
        f"Pushing {folder} to the Hub repo {repo_id} failed: {cause}\n"
        f"The local output is intact at {folder}; nothing there was changed. To retry the push, run:\n"
        f"    {retry_command}\n"
        f"or in Python: from hf_deit.hub import push_folder_to_hub; "
        f"push_folder_to_hub({str(folder)!r}, {repo_id!r}{f', ignore_patterns={ignore!r}' if ignore else ''})"
    )
    return HubPushError(_redact(message, token), transient)


def _retry_command(folder: Path, repo_id: str, *, private: bool, revision: str | None, exclude=None) -> str:
    """The huggingface_hub CLI command that uploads the same folder (it reads the token from HF_TOKEN or the login)."""
    command = ["hf", "upload", repo_id, str(folder), "."]
    if revision is not None:
        command += ["--revision", revision]
    if private:
        command.append("--private")
    for pattern in exclude or ():
        command += ["--exclude", pattern]
    return shlex.join(command)


def _is_transient(error: BaseException) -> bool:
    return any(isinstance(cause, TRANSIENT_ERRORS) for cause in _causes(error)) or _status_code(error) in TRANSIENT_STATUS


def _status_code(error: BaseException) -> int | None:
    responses = (getattr(cause, "response", None) for cause in _causes(error) if isinstance(cause, HfHubHTTPError))
    return next((response.status_code for response in responses if response is not None), None)


def _causes(error: BaseException):
    """The error and what it wraps (huggingface_hub wraps LFS upload errors in a RuntimeError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _describe(error: BaseException) -> str:
    """'Type: first line' of the error, then of the error at the root of what it wraps."""
    root = list(_causes(error))[-1]
    return " <- ".join(f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0]}"
                       for cause in ((error,) if root is error else (error, root)))  # fmt: skip


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "hf_***") if token else text


@contextlib.contextmanager
def _request_timeout(seconds: float | None):
    """Give huggingface_hub's shared HTTP client (public `get_session`, the one every request of the push uses) a
    finite timeout for the duration of the push; the previous timeout is restored afterwards."""
    client = get_session()
    previous = client.timeout
    if seconds is not None:
        client.timeout = httpx2.Timeout(seconds)
    try:
        yield
    finally:
        client.timeout = previous


# ---- the training scripts' push ----

# Never uploaded: checkpoints (optimizer states), their staging folders, and transformers' private files.
HUB_IGNORE_PATTERNS = ["checkpoint-*", ".partial-*", "_*"]


def take_hub_settings(training_args) -> tuple:
    """(hub token, push_to_hub), taken out of `training_args`.

    The push happens once, at the end, through `hf_deit.hub.push_folder_to_hub` (retries, timeouts; on failure the
    local output stays and the error says how to retry). Trainer's own push would create the repo at construction and
    upload from a background thread at each save, outside that error handling, so it is switched off. The token is
    cleared from the arguments because Trainer pickles them, unredacted, into `training_args.bin` in every
    checkpoint; it stays in this function's caller only (None: HF_TOKEN or the saved login).
    """
    hub_token, push_to_hub = training_args.hub_token, training_args.push_to_hub
    training_args.hub_token, training_args.push_to_hub = None, False
    if push_to_hub and not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id <user or org>/<name>: the repo to push to.")
    return hub_token, push_to_hub


def push_output_to_hub(training_args, hub_token) -> str:
    """The training scripts' final push of `output_dir` (see `take_hub_settings`)."""
    try:
        url = push_folder_to_hub(
            training_args.output_dir,
            training_args.hub_model_id,
            token=hub_token,
            private=bool(training_args.hub_private_repo),
            revision=training_args.hub_revision,
            ignore_patterns=HUB_IGNORE_PATTERNS,
        )
    except HubPushError as error:  # already names the folder and the retry command, with the token redacted
        raise SystemExit(f"Training finished and the model is saved, but the push failed.\n{error}") from None
    logger.info("Pushed %s to %s", training_args.output_dir, url)
    return url
