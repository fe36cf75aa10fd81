from driftloop.runtime.service import run

from .service import build

run("registry", build)
