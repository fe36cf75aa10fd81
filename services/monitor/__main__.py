from driftloop.runtime.retention import purge_task
from driftloop.runtime.service import run

from . import retention
from .service import build

run("monitor", build, tasks={"purge": purge_task(retention.purge_with_pipelines)})
