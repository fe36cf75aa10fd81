from driftloop.service import run

from .retention import purge_task
from .service import build

run("monitor", build, tasks={"purge": purge_task})
