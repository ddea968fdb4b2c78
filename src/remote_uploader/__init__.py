"""remote-uploader: get IP addresses out of log files and into one central place, exactly once."""

__version__ = "0.1.0"
