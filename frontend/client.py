"""The one small HTTP client the UI uses to talk to the slicewise API (frontend/ never imports data/ or model/).

    client = ApiClient("http://127.0.0.1:8000")
    project = client.create_project("Knee", [{"value": 1, "name": "cartilage", "color": "#e6194b"}])
    client.upload_volume(project["id"], "scan.nii.gz")

Every error of the API (`{"detail": "..."}`) becomes an `ApiError` with the status code and that detail,
so the UI can show the server's own explanation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import httpx

CSRF_COOKIE = "slicewise_csrf"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, read=600.0)  # an upload of a large DICOM zip is imported before the answer


class ApiError(Exception):
    """A refused or failed API call: `status` (0 when the server could not be reached) and `detail`."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"{status}: {detail}" if status else detail)
        self.status = status
        self.detail = detail


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):  # FastAPI validation errors, if one ever escapes the app's own mapping
        return "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail)
    return str(detail) if detail is not None else str(body)[:500]


def _cookie_value(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


class ApiClient:
    def __init__(
        self,
        base_url: str,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)
        self._headers: dict[str, str] = {}

    def as_caller(self, cookie: str | None = None, token: str | None = None) -> ApiClient:
        """A client sharing this one's connection pool that acts for one browser user: it forwards their
        session cookie (the Cookie header of their request) or sends an API token. With no users
        configured on the server neither is needed and this client is returned unchanged."""
        if not cookie and not token:
            return self
        clone = object.__new__(ApiClient)
        clone.base_url, clone._http = self.base_url, self._http
        clone._headers = {**self._headers}
        if cookie:
            clone._headers["Cookie"] = cookie
            csrf = _cookie_value(cookie, CSRF_COOKIE)
            if csrf:  # the server wants it echoed on state-changing calls made with the login cookie
                clone._headers["X-CSRF-Token"] = csrf
        if token:
            clone._headers["Authorization"] = f"Bearer {token}"
        return clone

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            if self._headers:
                kwargs["headers"] = {**self._headers, **(kwargs.get("headers") or {})}
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise ApiError(0, f"the server did not answer in time ({method} {path})") from exc
        except httpx.TransportError as exc:
            raise ApiError(0, f"cannot reach the slicewise server at {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise ApiError(response.status_code, _detail(response))
        return response

    def _json(self, method: str, path: str, **kwargs) -> Any:
        return self._request(method, path, **kwargs).json()

    # ------------------------------------------------------------------ projects and volumes

    def health(self) -> dict:
        return self._json("GET", "/api/health")

    def list_projects(self) -> list[dict]:
        return self._json("GET", "/api/projects")

    def get_project(self, project_id: int) -> dict:
        return self._json("GET", f"/api/projects/{int(project_id)}")

    def parse_labels(self, text: str) -> list[dict]:
        """The label map typed as text (one syntax, defined by the server) -> [{"value", "name", "color"}]."""
        return self._json("GET", "/api/labels/parse", params={"text": text})

    def create_project(self, name: str, labels: list[dict]) -> dict:
        return self._json("POST", "/api/projects", json={"name": name, "labels": labels})

    def list_volumes(self, project_id: int) -> list[dict]:
        return self._json("GET", f"/api/projects/{int(project_id)}/volumes")

    def get_volume(self, volume_id: int) -> dict:
        return self._json("GET", f"/api/volumes/{int(volume_id)}")

    def upload_volume(
        self, project_id: int, path: str | Path, *, filename: str | None = None, fileobj: BinaryIO | None = None
    ) -> dict:
        """Upload one .nii / .nii.gz / DICOM .zip; the server decides the format from the file name."""
        path = Path(path)
        name = filename or path.name
        if fileobj is not None:
            return self._json("POST", f"/api/projects/{int(project_id)}/volumes", files={"file": (name, fileobj)})
        with open(path, "rb") as handle:
            return self._json("POST", f"/api/projects/{int(project_id)}/volumes", files={"file": (name, handle)})

    def import_annotations(
        self, volume_id: int, path: str | Path, *, filename: str | None = None, axis: int = 2
    ) -> dict:
        """A mask volume made elsewhere -> its slices along `axis` with a labelled voxel become painted slices."""
        path = Path(path)
        with open(path, "rb") as handle:
            return self._json(
                "POST",
                f"/api/volumes/{int(volume_id)}/annotations/import",
                params={"axis": axis},
                files={"file": (filename or path.name, handle)},
            )

    def update_labels(self, project_id: int, labels: list[dict]) -> dict:
        return self._json("PUT", f"/api/projects/{int(project_id)}/labels", json={"labels": labels})

    def delete_volume(self, volume_id: int, confirm: str) -> dict:
        return self._json("DELETE", f"/api/volumes/{int(volume_id)}", params={"confirm": confirm})

    def delete_project(self, project_id: int, confirm: str) -> dict:
        return self._json("DELETE", f"/api/projects/{int(project_id)}", params={"confirm": confirm})

    # ------------------------------------------------------------------ annotations, training, models

    def list_annotations(self, volume_id: int) -> list[dict]:
        return self._json("GET", f"/api/volumes/{int(volume_id)}/annotations")

    def train(self, project_id: int, preset: str | None = None, mode: str | None = None) -> dict:
        """mode: "auto" (the server's default) | "refresh" | "full"."""
        body = {k: v for k, v in (("preset", preset), ("mode", mode)) if v} or None
        return self._json("POST", f"/api/projects/{int(project_id)}/train", json=body)

    def get_job(self, job_id: int) -> dict:
        return self._json("GET", f"/api/jobs/{int(job_id)}")

    def list_jobs(self, project_id: int) -> list[dict]:
        return self._json("GET", f"/api/projects/{int(project_id)}/jobs")

    def cancel_job(self, job_id: int) -> dict:
        return self._json("POST", f"/api/jobs/{int(job_id)}/cancel")

    def list_models(self, project_id: int) -> list[dict]:
        return self._json("GET", f"/api/projects/{int(project_id)}/models")

    def activate_model(self, project_id: int, model_id: int) -> dict:
        return self._json("POST", f"/api/projects/{int(project_id)}/models/{int(model_id)}/activate")

    def prediction_status(self, volume_id: int) -> dict:
        return self._json("GET", f"/api/volumes/{int(volume_id)}/prediction")
