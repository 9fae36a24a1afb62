"""What samples are made of and how they are kept: `formats` (a family's `Media`: files, pages, logger views),
`images` (tensors <-> image files), `audio` (waveforms <-> log-mel images, WAV bytes), and `suffixes` (the file
suffixes each modality reads, in one place). This package imports nothing itself."""
