"""The FastAPI application: routes that parse a request, call ``Service``, and return its JSON.

Paths are versioned (``/v1``); the web page and its files are served from the package itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from fastapi import Depends, FastAPI, File, Form, Header, Query, UploadFile
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from shitu.serve.auth import require_token
from shitu.serve.errors import ApiError, CatchAll, install_handlers
from shitu.serve.limits import BodyLimit
from shitu.serve.service import Service
from shitu.serve.uploads import Photo, described

STATIC = Path(__file__).resolve().parent / "static"
UPLOADS = File(..., description="One or more photos (repeat the field for more).")


def create_app(service: Service) -> FastAPI:
    """An app answering from ``service``; the caller runs it (uvicorn, or a test client)."""
    app = FastAPI(title="shitu", version="1", summary="Recognise products in photos and manage the gallery.")
    install_handlers(app)
    app.add_middleware(BodyLimit, limit=service.max_upload_bytes)
    app.add_middleware(CatchAll)

    def authorised(authorization: Optional[str] = Header(None)):
        require_token(service.token, authorization)

    @app.get("/healthz", tags=["service"])
    def healthz():
        return {"status": "ok"}

    @app.post("/v1/query", tags=["read"])
    def query(images: list[UploadFile] = UPLOADS, topk: int = Query(5, description="Matches per photo."),
              threshold: Optional[float] = Query(None, description="Below it the label is null; default: the "
                                                 "calibrated one; -1 answers every photo.")):
        """The ``shitu query --json`` array for the uploaded photos."""
        return service.query(read_photos(images), topk, threshold)

    @app.get("/v1/info", tags=["read"])
    def info():
        """What ``shitu info --json`` prints."""
        return service.info()

    @app.get("/v1/labels", tags=["read"])
    def labels():
        """Images per label, sorted by label."""
        return service.labels()

    @app.get("/v1/images", tags=["read"])
    def images(label: Optional[str] = None, offset: int = Query(0, ge=0),
               limit: int = Query(100, ge=1, le=1000)):
        """Gallery rows in id order, of one label or all."""
        return service.images(label, offset, limit)

    @app.get("/v1/images/{image_id}/thumbnail", tags=["read"], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(image_id: int):
        """A JPEG of the gallery photo, at most 256 px on its longest side."""
        return Response(service.thumbnail(image_id), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=86400"})

    @app.post("/v1/images", tags=["write"], dependencies=[Depends(authorised)])
    def add(images: list[UploadFile] = UPLOADS,
            label: Optional[str] = Form(None, description="The label to add them to.")):
        """Store the photos in the gallery under ``label`` and add them to the index."""
        return service.add(read_photos(images), label)

    @app.delete("/v1/images/{image_id}", tags=["write"], dependencies=[Depends(authorised)])
    def remove_image(image_id: int):
        """Remove one image from the index (its file stays in the gallery, as with ``shitu remove``)."""
        return service.remove_image(image_id)

    @app.delete("/v1/labels/{label:path}", tags=["write"], dependencies=[Depends(authorised)])
    def remove_label(label: str):
        """Remove every image of a label from the index."""
        return service.remove_label(label)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def read_photos(files: list[UploadFile]) -> list[Photo]:
    """The uploads' bytes (already within the request limit), named for messages."""
    photos = []
    for position, upload in enumerate(files):
        if not hasattr(upload, "file"):
            raise ApiError(400, "images must be files (multipart form uploads), not text fields")
        photos.append(Photo(described(position, upload.filename), upload.file.read()))
    if not photos:
        raise ApiError(400, "send at least one photo in the field 'images'")
    return photos
