from driftloop.runtime.retention import purge_task
from driftloop.runtime.service import run

from . import retention
from .service import build

run("serving", build, tasks={"purge": purge_task(retention.purge)}, replicas=lambda s: s.serving.worker_count())
