from driftloop.service import run

from .service import build

run("dashboard", build)
