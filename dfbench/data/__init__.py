"""``dfbench data``: fetch, verify and lay out the datasets the tasks read.

* :mod:`dfbench.data.manifest` — what each dataset is: its files (URL, size, checksum where published), where it
  lives (``$DFBENCH_DATA/<folder>``, default ``./data``), and the task whose loader checks its layout;
* :mod:`dfbench.data.download` — resumable, checksummed downloads (pooch with a downloader that resumes over HTTP
  range requests), trust on first use where no checksum is published (``$DFBENCH_HOME/data.lock.json``);
* :mod:`dfbench.data.unpack` — archives unpacked into a staging folder beside the destination, every entry checked
  to stay inside it, the layout checked, and only then moved into place;
* :mod:`dfbench.data.install` — ``ls``, ``get`` and ``verify`` over those.
"""
