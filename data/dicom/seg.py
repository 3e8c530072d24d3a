"""Label maps as DICOM SEG over their source series (highdicom), and back.

A SEG references the source series' instances frame by frame, so a PACS viewer
shows it over the images it came from. Segment ``k`` is label value ``k``; its
label is the class name from the plan, and its property type a SNOMED CT code
where the plan gives one (``codes``), else the generic "Tissue".
"""

from __future__ import annotations

import os

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes as sr_codes

from medflow.data.atomic import write_atomic
from medflow.data.nifti import CaseError

SOFTWARE = "medflow"


def _coded(code) -> hd.sr.CodedConcept:
    """A (scheme, value, meaning) triple, e.g. ("SCT", "389080000", "Gray matter"), as a CodedConcept."""
    scheme, value, meaning = code
    return hd.sr.CodedConcept(value=str(value), scheme_designator=str(scheme), meaning=str(meaning))


def write_seg(path: str | os.PathLike, labels: np.ndarray, source_files: list[str], classes: dict[int, str], *,
              codes: dict[int, tuple] | None = None, series_description: str = "medflow segmentation") -> None:
    """Write ``labels`` (columns, rows, slices) as a BINARY DICOM SEG referencing ``source_files``.

    Args:
        labels: integer label map on the source series' grid, axis 2 in the order of ``source_files``.
        source_files: the source slice files, one per slice (as read by :func:`read_series`).
        classes: label value -> class name; 0 is background and gets no segment.
        codes: label value -> (scheme, code, meaning) for the segmented property type.
    """
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in source_files]
    if labels.shape != (int(sources[0].Columns), int(sources[0].Rows), len(sources)):
        raise ValueError(f"labels of shape {labels.shape} do not lie on the source grid of {len(sources)} slices "
                         f"of {sources[0].Rows}x{sources[0].Columns}")
    values = [v for v in sorted(classes) if v != 0]
    algorithm = hd.AlgorithmIdentificationSequence(name=SOFTWARE, version="1",
                                                   family=sr_codes.DCM.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=str(classes[v])[:64],
        segmented_property_category=sr_codes.SCT.Tissue,
        segmented_property_type=_coded(codes[v]) if codes and v in codes else sr_codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
    ) for i, v in enumerate(values)]
    # Segment numbers run 1..N over the non-background classes in value order.
    remap = np.zeros(int(max(classes)) + 1, dtype=np.uint8)
    remap[values] = np.arange(1, len(values) + 1)
    pixels = remap[np.asarray(labels, dtype=np.intp)].transpose(2, 1, 0)  # (slices, rows, columns)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=SOFTWARE, manufacturer_model_name=SOFTWARE,
        software_versions="1", device_serial_number="0", series_description=series_description[:64],
        omit_empty_frames=False,
    )
    with write_atomic(path, suffix=".dcm") as tmp:
        seg.save_as(tmp)


def read_seg(path: str | os.PathLike, instances: list, classes: dict[int, str] | None = None) -> np.ndarray:
    """A DICOM SEG as a label map on its source series' grid.

    Args:
        instances: the source volume's (SOPInstanceUID, frame) per slice (``DicomVolume.instances``).
        classes: label value -> name; when given, each segment's label must name one of them and gets its
            value; otherwise segment ``k`` is value ``k``.

    Returns:
        (columns, rows, slices) uint8.

    Raises:
        CaseError: not a SEG, overlapping segments, or a SEG that does not reference these instances.
    """
    path = str(path)
    classes = {int(k): str(v) for k, v in classes.items()} if classes else None  # JSON records key by string
    try:
        seg = hd.seg.segread(path)
    except Exception as err:
        raise CaseError(path, f"not a readable DICOM SEG ({' '.join(str(err).split())[:160]})") from None
    numbers = list(seg.segment_numbers)
    value_of = {n: n for n in numbers}
    if classes:
        by_name = {name.lower(): v for v, name in classes.items()}
        for n in numbers:
            label = str(seg.get_segment_description(n).segment_label).lower()
            if label not in by_name:
                raise CaseError(path, f"segment {n} {label!r} names none of the classes {sorted(classes.values())}")
            value_of[n] = by_name[label]
    uids = [uid for uid, _ in instances]
    # highdicom fills instances a SEG does not cover with zeros: a SEG of another series must not pass for
    # an empty one, so the instances it references have to be this series'.
    referenced = {item.ReferencedSOPInstanceUID for s in seg.get("ReferencedSeriesSequence", [])
                  for item in s.get("ReferencedInstanceSequence", [])}
    foreign = referenced - set(uids)
    if not referenced or foreign:
        raise CaseError(path, f"SEG does not map onto the series' {len(uids)} slices ({len(foreign)} of the "
                              f"{len(referenced)} instances it references are not in the series)")
    try:
        stack = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                                  assert_missing_frames_are_empty=True)
    except Exception as err:
        raise CaseError(path, f"SEG does not map onto the series' {len(uids)} slices "
                              f"({' '.join(str(err).split())[:160]})") from None
    lut = np.zeros(max(numbers, default=0) + 1, dtype=np.uint8)
    for n, v in value_of.items():
        lut[n] = v
    return lut[stack].transpose(2, 1, 0)
