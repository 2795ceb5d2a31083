"""A typed Python client for the bdia HTTP API, on httpx.

    from bdia.client import BdiaClient

    with BdiaClient("http://127.0.0.1:8000") as client:
        submitted = client.invert(open("photo.png", "rb").read(), "a red circle", steps=50)
        job = client.edit(submitted.inversion_id, "a blue circle")
        job = client.wait(job, on_progress=lambda p: print(p.step, "/", p.total))
        open("edit.png", "wb").write(client.result(job.id))

Submissions take ``wait=N`` (``Prefer: wait=N``): the answer is then the finished job when it finishes
within N seconds (bounded by the server's ``BDIA_MAX_WAIT_S``), else the queued or running one.
Every error response raises ``ApiError`` with the problem's ``status``, ``code`` and ``detail``;
``wait`` raises ``JobFailed`` for a job that failed or was canceled.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from .jobqueue.states import TERMINAL
from .wire import Event, InversionList, InversionOut, JobList, JobOut, ModelsOut, ProgressOut

ImageInput = bytes | str | os.PathLike[str] | BinaryIO


class ApiError(Exception):
    """An error response (RFC 9457 problem details)."""

    def __init__(self, status: int, code: str, detail: str, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.problem = problem


class JobFailed(Exception):
    """A job that ended ``failed`` or ``canceled``."""

    def __init__(self, job: JobOut) -> None:
        error = job.error
        super().__init__(f"job {job.id} {job.status}" + (f": {error.code}: {error.detail}" if error else ""))
        self.job = job


@dataclass(frozen=True)
class Submitted:
    """The answer to an inversion request: the cached inversion, or the job that will make it."""

    inversion: InversionOut | None = None
    job: JobOut | None = None

    @property
    def inversion_id(self) -> str:
        return self.inversion.inversion_id if self.inversion else self.job.inversion_id  # type: ignore[union-attr]

    @property
    def cached(self) -> bool:
        return self.inversion is not None


class BdiaClient:
    """Submit inversions, edits and reconstructions; wait for jobs (with progress); fetch results."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> BdiaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- submitting -----------------------------------------------------------------------------

    def invert(
        self,
        image: ImageInput,
        prompt: str = "",
        *,
        idempotency_key: str | None = None,
        wait: float | None = None,
        **params: Any,
    ) -> Submitted:
        """Invert an image; ``params``: steps, strength, guidance_scale, gamma, exact, model, method,
        webhook, webhook_events, …"""
        data = {"prompt": prompt, **_form(params)}
        response = self._request(
            "POST",
            "/v1/inversions",
            data=data,
            files={"image": _file(image)},
            idempotency_key=idempotency_key,
            wait=wait,
        )
        body = response.json()
        if "kind" in body:  # a job: 202, or 200 finished after waiting
            return Submitted(job=JobOut(**body))
        return Submitted(inversion=InversionOut(**body))

    def edit(
        self,
        inversion_id: str,
        prompt: str,
        *,
        guidance_scale: float | None = None,
        negative_prompt: str | None = None,
        edit_gamma: float | None = None,
        webhook: str | None = None,
        webhook_events: Iterable[str] | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> JobOut:
        """Edit a cached inversion with a new prompt (``edit_gamma`` < 1 damps colour casts; never exact)."""
        body: dict[str, Any] = {"inversion_id": inversion_id, "prompt": prompt}
        optional = {
            "guidance_scale": guidance_scale,
            "negative_prompt": negative_prompt,
            "edit_gamma": edit_gamma,
            "webhook": webhook,
            "webhook_events": None if webhook_events is None else list(webhook_events),
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        response = self._request("POST", "/v1/edits", json=body, idempotency_key=idempotency_key, wait=wait)
        return JobOut(**response.json())

    def edit_image(
        self,
        image: ImageInput,
        source_prompt: str,
        prompt: str,
        *,
        mask: ImageInput | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
        **params: Any,
    ) -> JobOut:
        """Invert (or reuse the cached inversion of) an image and edit it, in one call (``/v1/edits/upload``)."""
        files = {"image": _file(image)}
        if mask is not None:
            files["mask"] = _file(mask, "mask")
        data = {"source_prompt": source_prompt, "prompt": prompt, **_form(params)}
        response = self._request(
            "POST", "/v1/edits/upload", data=data, files=files, idempotency_key=idempotency_key, wait=wait
        )
        return JobOut(**response.json())

    def reconstruct(
        self,
        inversion_id: str,
        *,
        webhook: str | None = None,
        webhook_events: Iterable[str] | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> JobOut:
        """Regenerate with the source prompt; the result reports the round-trip error."""
        body: dict[str, Any] = {"inversion_id": inversion_id}
        if webhook is not None:
            body["webhook"] = webhook
        if webhook_events is not None:
            body["webhook_events"] = list(webhook_events)
        response = self._request("POST", "/v1/reconstructions", json=body, idempotency_key=idempotency_key, wait=wait)
        return JobOut(**response.json())

    # --- jobs -----------------------------------------------------------------------------------

    def job(self, job_id: str) -> JobOut:
        return JobOut(**self._request("GET", f"/v1/jobs/{job_id}").json())

    def jobs(
        self,
        *,
        status: str | Iterable[str] | None = None,
        kind: str | Iterable[str] | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> JobList:
        """A page of this tenant's jobs, newest first; ``next_cursor`` fetches the next one."""
        query = {"status": _many(status), "kind": _many(kind), "limit": limit, "cursor": cursor}
        return JobList(**self._request("GET", "/v1/jobs", params=_query(query)).json())

    def all_jobs(self, **filters: Any) -> Iterator[JobOut]:
        """Every job ``jobs`` lists with these filters, page after page."""
        cursor = None
        while True:
            page = self.jobs(cursor=cursor, **filters)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def cancel(self, job_id: str) -> JobOut:
        return JobOut(**self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def events(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[Event]:
        """The job's Server-Sent Events, past ones first; ends after the final event."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(self.http.timeout.connect, read=60.0)
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                _raise(response)
            yield from _parse_sse(response.iter_lines())

    def wait(
        self,
        job: JobOut | str,
        *,
        timeout: float | None = None,
        on_progress: Callable[[ProgressOut], None] | None = None,
        stream: bool = True,
        poll_interval: float = 0.25,
        raise_on_failure: bool = True,
    ) -> JobOut:
        """Block until the job finishes (following its events, or polling); return its final state."""
        job_id = job if isinstance(job, str) else job.id
        deadline = None if timeout is None else time.monotonic() + timeout
        if stream:
            try:
                for event in self.events(job_id):
                    if event.event == "progress" and on_progress is not None:
                        on_progress(ProgressOut(**event.data))
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"job {job_id} did not finish within {timeout}s")
            except httpx.TransportError:
                pass  # fall back to polling
            except ApiError as exc:
                if exc.status not in (429, 503):
                    raise
                # the tenant holds too many streams, or the API is briefly unavailable: poll instead
        while True:
            current = self.job(job_id)
            if current.status in TERMINAL:
                break
            if current.progress is not None and on_progress is not None:
                on_progress(current.progress)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish within {timeout}s")
            time.sleep(poll_interval)
        if raise_on_failure and current.status != "succeeded":
            raise JobFailed(current)
        return current

    def result(self, job_id: str) -> bytes:
        """The PNG output of a finished edit or reconstruction."""
        return self._request("GET", f"/v1/jobs/{job_id}/result").content

    def mask(self, job_id: str) -> bytes:
        """The edit mask a finished edit used: PNG at the result's size, white = changed (404 when it had none)."""
        return self._request("GET", f"/v1/jobs/{job_id}/mask").content

    # --- inversions and the deployment ----------------------------------------------------------

    def inversion(self, inversion_id: str) -> InversionOut:
        return InversionOut(**self._request("GET", f"/v1/inversions/{inversion_id}").json())

    def inversions(
        self, *, status: str | Iterable[str] | None = None, limit: int = 20, cursor: str | None = None
    ) -> InversionList:
        """A page of this tenant's inversions (ready or pending), newest first."""
        query = {"status": _many(status), "limit": limit, "cursor": cursor}
        return InversionList(**self._request("GET", "/v1/inversions", params=_query(query)).json())

    def latents(self, inversion_id: str) -> bytes:
        """The latent pair as safetensors bytes."""
        return self._request("GET", f"/v1/inversions/{inversion_id}/latents").content

    def delete_inversion(self, inversion_id: str) -> None:
        self._request("DELETE", f"/v1/inversions/{inversion_id}")

    def models(self) -> ModelsOut:
        return ModelsOut(**self._request("GET", "/v1/models").json())

    def ready(self) -> bool:
        """Whether the service answers and has at least one worker."""
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def _request(
        self,
        method: str,
        path: str,
        *,
        idempotency_key: str | None = None,
        wait: float | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if wait:
            headers["Prefer"] = f"wait={wait:g}"
            read = max(self.http.timeout.read or 0, wait + 30)  # the server may hold the answer that long
            kwargs.setdefault("timeout", httpx.Timeout(self.http.timeout.connect, read=read))
        response = self.http.request(method, path, headers=headers or None, **kwargs)
        if response.status_code >= 400:
            _raise(response)
        return response


def _raise(response: httpx.Response) -> None:
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    raise ApiError(
        response.status_code,
        problem.get("code", "error"),
        problem.get("detail", response.text[:200]),
        problem,
    )


def _form(params: dict[str, Any]) -> dict[str, str | list[str]]:
    """Form values: booleans as ``true``/``false``, lists as repeated fields, ``None`` left out."""

    def text(value: Any) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)

    return {
        k: [text(item) for item in v] if isinstance(v, (list, tuple)) else text(v)
        for k, v in params.items()
        if v is not None
    }


def _many(value: str | Iterable[str] | None) -> list[str] | None:
    return None if value is None else [value] if isinstance(value, str) else list(value)


def _query(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _file(image: ImageInput, name: str = "image") -> tuple[str, bytes]:
    if isinstance(image, bytes):
        return (f"{name}.bin", image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        return (path.name, path.read_bytes())
    return (getattr(image, "name", name), image.read())


def _parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """Server-Sent Events from text lines (``id:``, ``event:``, ``data:``; comments skipped)."""
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in lines:
        if not line:
            if data and "event" in fields:
                event = Event(id=fields.get("id", ""), event=fields["event"], data=json.loads("\n".join(data)))
                yield event
                if event.event in TERMINAL:
                    return
            fields, data = {}, []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value
