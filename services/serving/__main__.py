from driftloop.service import run

from .retention import purge_task
from .service import build

run("serving", build, tasks={"purge": purge_task})
