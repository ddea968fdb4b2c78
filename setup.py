"""Only the optional native extraction core; everything else about the package is in pyproject.toml.

`optional=True`: where no C compiler (or no Python headers) is found, the build warns and goes on
without it, and the agent uses its pure-Python engines (docs/extraction.md, "Engines").
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "remote_uploader.agent._native",
            sources=["src/remote_uploader/agent/_native.c"],
            extra_compile_args=["-O3"],  # -O3: the newline count is vectorised
            optional=True,
        )
    ]
)
