"""cvmigrate: online server migration to Tencent Cloud CVM."""

__version__ = "0.1.0"
