//! DaemonService: what the daemon is doing.

use std::sync::Arc;
use std::time::Instant;

use minerva_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::models::loaded_details;
use crate::engine::Engine;

pub(crate) struct DaemonApi {
    pub(crate) engine: Arc<Engine>,
    pub(crate) started: Instant,
    pub(crate) listen: String,
}

fn rss_bytes() -> u64 {
    let pid = sysinfo::Pid::from_u32(std::process::id());
    let mut sys = sysinfo::System::new();
    sys.refresh_processes_specifics(
        sysinfo::ProcessesToUpdate::Some(&[pid]),
        true,
        sysinfo::ProcessRefreshKind::nothing().with_memory(),
    );
    sys.process(pid).map_or(0, |p| p.memory())
}

#[tonic::async_trait]
impl pb::daemon_service_server::DaemonService for DaemonApi {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let engine = &self.engine;
        Ok(Response::new(pb::StatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            listen: self.listen.clone(),
            loaded_models: engine
                .loaded_models()
                .iter()
                .map(|m| loaded_details(engine, m))
                .collect(),
            rss_bytes: rss_bytes(),
            default_keep_alive_seconds: engine.config().keep_alive.as_seconds(),
            backends: engine
                .backend_names()
                .into_iter()
                .map(String::from)
                .collect(),
            models_dir: engine.store().models_dir().display().to_string(),
            default_max_draft: engine.config().speculate.unwrap_or(0),
        }))
    }
}
