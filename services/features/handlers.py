"""Event handlers of the features service (testable with a Runtime, without a consumer loop)."""

from __future__ import annotations

import logging

from driftloop.clients.db.models import FeatureSet
from driftloop.clients.objectstore import ObjectStore, open_object_store
from driftloop.clients.spark import spark_session
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import DatasetVersionCreated, FeaturesMaterialized
from driftloop.contracts.pipeline import pipeline_for_stream
from driftloop.runtime.service import Runtime

from .materialize import Materialized, materialize
from .onlinestore import OnlineStore, open_online_store

log = logging.getLogger(__name__)
SPARK_APP = "driftloop-features"  # the name of the process's one SparkSession

SERVICE = "features"


class FeaturesHandlers:
    def __init__(self, runtime: Runtime, store: ObjectStore | None = None) -> None:
        self.runtime = runtime
        self.store = store or open_object_store(runtime.settings)
        self.online: OnlineStore = open_online_store(runtime.settings, runtime.engine)

    def on_dataset_version_created(self, event: Event[DatasetVersionCreated]) -> None:
        """Materialize the version's features offline and online, then emit ``FeaturesMaterialized``."""
        created = event.payload
        stream, version, dataset_version_id = created.stream, created.version, created.dataset_version_id
        # An unknown stream raises NotFoundError: the consumer records it as the last error and logs it.
        pipeline = pipeline_for_stream(self.runtime.pipelines, stream)
        log.info("materializing features of %s", dataset_version_id)
        result = materialize(
            spark_session(self.runtime.settings, SPARK_APP),
            self.store,
            pipeline,
            version,
            dataset_version_id,
        )
        online_entities = self.online.write(result.latest)
        self._record(stream, pipeline.feature_names, result)
        self.runtime.bus.publish(
            new_event(
                FeaturesMaterialized(
                    stream=stream,
                    dataset_version_id=dataset_version_id,
                    feature_set_uri=result.uri,
                    feature_names=pipeline.feature_names,
                    row_count=result.row_count,
                    online_entities=online_entities,
                ),
                producer=SERVICE,
                cause=event,
                # Killed after publishing and before the cause is marked handled, the service materializes the
                # version again on redelivery: the same id then, so the version is announced (and acted on) once.
                once_per=event.id,
            )
        )
        log.info(
            "materialized %s: %d rows at %s, %d entities online",
            dataset_version_id,
            result.row_count,
            result.uri,
            online_entities,
        )

    def _record(self, stream: str, feature_names: list[str], result: Materialized) -> None:
        with self.runtime.Session.begin() as session:
            session.merge(
                FeatureSet(
                    dataset_version_id=result.dataset_version_id,
                    stream=stream,
                    uri=result.uri,
                    feature_names=feature_names,
                    row_count=result.row_count,
                )
            )
