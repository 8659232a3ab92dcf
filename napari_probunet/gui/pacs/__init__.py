"""The PACS dock (DICOMweb): :class:`~napari_probunet.gui.pacs.widget.PacsWidget`."""
