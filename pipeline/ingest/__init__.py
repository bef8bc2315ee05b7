"""Corpus ingestion: format readers (DAVIS, YouTube-VOS, FBMS, HMHI-Net, frame folders, videos) and the manifest."""
