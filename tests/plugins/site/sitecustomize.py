"""Start-up hook of a test's job subprocess (``tests.plugins.faults.subprocess_env`` puts this folder on its
``PYTHONPATH``): installs the faults named in ``HMHI_TEST_FAULTS``. Not a package: Python imports this file by
name at start-up."""

from tests.plugins.faults import install_from_env

install_from_env()
