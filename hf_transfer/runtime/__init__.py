"""Runtime helpers every layer shares: cache paths and checksummed entries (cache), free space before large
writes (disk), one writer per output folder (folder_lock), console hygiene (logs), and the check that the
installed ``hf_transfer`` is this package (installation). They import only :mod:`hf_transfer.errors`."""
