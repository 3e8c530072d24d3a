"""DICOM in and out: series found in folders, read into validated RAS volumes, and DICOM SEG written back.

- :mod:`medflow.data.dicom.scan`: the series under a folder (any depth), non-image objects set aside;
- :mod:`medflow.data.dicom.series`: one series to a volume, with dcm2niix's checks;
- :mod:`medflow.data.dicom.ids`: de-identified case and patient ids;
- :mod:`medflow.data.dicom.write`: volumes written as series (sample data, tests);
- :mod:`medflow.data.dicom.seg`: label maps as DICOM SEG over their source series, and back.
"""
