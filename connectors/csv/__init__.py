"""City-system CSV import and the standard open-data datasets.

``layout`` reads dataset definitions and mapping files, ``encoding`` and ``values`` read
what legacy systems write (CP932, full-width digits, era dates, local government codes),
``geo`` converts JGD2011 plane rectangular coordinates, ``detect`` tells which layout a
header is written for, ``importer`` turns a file into
validated entities and sends them, ``export`` writes entities back as standard CSV rows,
and ``cli`` is the ``renkei import-csv`` command.
"""
