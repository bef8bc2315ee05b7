"""A COCO-style video instance file in the YouTube-VIS layout, from segment's finished videos.

One ``videos`` entry per video (``file_names`` of its frames, ``width``, ``height``, ``length``) and one
``annotations`` entry per video with an object: per-frame ``segmentations`` (COCO RLE, ``null`` where the mask is
empty), ``areas`` and ``bboxes`` (``[x, y, w, h]``, ``null`` where empty), ``category_id`` 1. pycocotools' mask
API (and the YouTube-VIS API built on it) reads the RLE as is (``pycocotools.coco.COCO()`` itself expects the image
layout, not this video one); areas and boxes are pycocotools' own ``area`` and ``toBbox``.
"""

from __future__ import annotations

from typing import Any

from pipeline.formats.finished import FinishedVideo
from pipeline.storage import Storage

__all__ = ["CocoVideoWriter"]


class CocoVideoWriter:
    """Collects videos (ids 1, 2, ... in the order added) and writes the JSON file at the end."""

    def __init__(self, category: str, frame_ext: str = ".jpg"):
        self.category = category
        self.frame_ext = frame_ext
        self.videos: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.frames = 0

    def add(self, video: FinishedVideo) -> None:
        from pycocotools import mask as coco_mask

        video_number = len(self.videos) + 1
        self.videos.append(
            {
                "id": video_number,
                "name": video.video_id,
                "width": video.width,
                "height": video.height,
                "length": len(video.frames),
                "file_names": [f"{video.video_id}/{f.name}{self.frame_ext}" for f in video.frames],
            }
        )
        self.frames += len(video.frames)
        segmentations, areas, bboxes = [], [], []
        for frame in video.frames:
            if frame.area == 0:
                segmentations.append(None)
                areas.append(None)
                bboxes.append(None)
                continue
            rle = {"size": frame.rle["size"], "counts": frame.rle["counts"].encode("ascii")}
            segmentations.append(frame.rle)
            areas.append(float(coco_mask.area(rle)))
            bboxes.append([float(v) for v in coco_mask.toBbox(rle)])
        if any(s is not None for s in segmentations):
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "video_id": video_number,
                    "category_id": 1,
                    "iscrowd": 0,
                    "width": video.width,
                    "height": video.height,
                    "segmentations": segmentations,
                    "areas": areas,
                    "bboxes": bboxes,
                }
            )

    def document(self, info: dict[str, Any]) -> dict[str, Any]:
        return {
            "info": info,
            "licenses": [],
            "categories": [{"id": 1, "name": self.category, "supercategory": self.category}],
            "videos": self.videos,
            "annotations": self.annotations,
        }

    def finish(self, storage: Storage, rel: str, info: dict[str, Any]) -> dict[str, Any]:
        import json

        storage.write_bytes(rel, json.dumps(self.document(info), separators=(",", ":")).encode("utf-8"))
        return {
            "url": storage.join(rel),
            "videos": len(self.videos),
            "annotations": len(self.annotations),
            "frames": self.frames,
        }
