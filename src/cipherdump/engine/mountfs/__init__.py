"""Read-only filesystems to mount: the model behind ``cipherdump mount``, without FUSE.

- :mod:`.model`: a tree of :class:`~.model.MountNode` objects answered by path
  (lookup, getattr, readdir, readlink, read, listxattr, getxattr), the one interface the
  FUSE adapter (:mod:`cipherdump.fusemount`) calls;
- :mod:`.records`: the key-less records (``user.cipherdump.*``) an object shows;
- :mod:`.image`: an image or device as its stored ciphertext (``mount --ciphertext``);
- :mod:`.snapshot`: one snapshot, without keys (no-key names, stored data units) or
  with keys (plaintext where a key matches);
- :mod:`.repository`: the repository layout (``snapshots/``, ``ids/``, ``hosts/``,
  ``tags/``, ``latest``) over the snapshots, refreshed at most every minute.

Nothing here knows FUSE: tests and other front ends call the model directly.  Errors a
filesystem returns are raised as :class:`OSError` with their errno; a
:class:`~cipherdump.errors.CipherdumpError` (damage met while reading) is the adapter's
to report and turn into ``EIO``.  Nothing is imported at the top of this package.
"""
