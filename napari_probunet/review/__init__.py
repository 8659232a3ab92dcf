"""The review layer, without Qt or napari: what the widgets show and do, as plain Python.

State and its transitions, region geometry, sampling jobs on arrays, the provenance record,
the latent plane, export, bundles, assessment, the domain check and metrics. It builds on
:mod:`napari_probunet.session` and :mod:`napari_probunet.model`. See docs/architecture.md.
"""
