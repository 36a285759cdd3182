//! What the benchmark ran on, and how much memory and CPU the daemon used while it ran.

use std::time::Duration;

use minerva_proto::v1::{BenchMachine, BenchResources};

/// The GPU as results report it: "absent: ..." when there is none; never zeros.
pub fn gpu_status() -> String {
    let nvml = [
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        "/usr/lib64/libnvidia-ml.so.1",
        "/usr/lib/libnvidia-ml.so.1",
    ];
    if std::path::Path::new("/dev/nvidia0").exists()
        || nvml.iter().any(|p| std::path::Path::new(p).exists())
    {
        // A GPU is there, but this build has no NVML sampling yet (the GPU issue adds it).
        "present: NVIDIA device found; this build does not sample NVML yet".into()
    } else {
        "absent: no NVIDIA device or NVML library on this machine".into()
    }
}

pub fn machine(backend: &str, backend_build: &str) -> BenchMachine {
    let mut sys = sysinfo::System::new();
    sys.refresh_cpu_all();
    sys.refresh_memory();
    let cpu_model = sys
        .cpus()
        .first()
        .map(|c| c.brand().trim().to_string())
        .unwrap_or_default();
    let mut features: Vec<&str> = Vec::new();
    for (on, name) in [
        (cfg!(target_feature = "avx"), "avx"),
        (cfg!(target_feature = "avx2"), "avx2"),
        (cfg!(target_feature = "fma"), "fma"),
        (cfg!(target_feature = "f16c"), "f16c"),
        (cfg!(target_feature = "avx512f"), "avx512f"),
        (cfg!(target_feature = "neon"), "neon"),
    ] {
        if on {
            features.push(name);
        }
    }
    let rustflags = env!("MINERVA_RUSTFLAGS");
    let native = rustflags.contains("target-cpu=native");
    BenchMachine {
        cpu_model,
        cpu_cores: sysinfo::System::physical_core_count().unwrap_or(0) as u32,
        cpu_threads: sys.cpus().len() as u32,
        memory_bytes: sys.total_memory(),
        os: format!(
            "{} {}",
            sysinfo::System::long_os_version().unwrap_or_default(),
            sysinfo::System::kernel_version().unwrap_or_default()
        ),
        gpu: gpu_status(),
        system: format!("minerva {} ({backend})", env!("CARGO_PKG_VERSION")),
        version: env!("CARGO_PKG_VERSION").into(),
        git_commit: env!("MINERVA_GIT_COMMIT").into(),
        build: format!(
            "{backend_build}; GGML_NATIVE={}; rustflags [{}]; rust cpu features: {}",
            if native { "ON" } else { "OFF" },
            rustflags.trim(),
            features.join(" ")
        ),
    }
}

/// Samples this process's RSS and CPU every 250 ms until stopped.
pub struct ResourceSampler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<BenchResources>,
}

impl ResourceSampler {
    pub fn start() -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let pid = sysinfo::Pid::from_u32(std::process::id());
            let mut sys = sysinfo::System::new();
            let kind = sysinfo::ProcessRefreshKind::nothing()
                .with_memory()
                .with_cpu();
            let mut rss: Vec<u64> = Vec::new();
            let mut cpu: Vec<f64> = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut first = true;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                sys.refresh_processes_specifics(
                    sysinfo::ProcessesToUpdate::Some(&[pid]),
                    true,
                    kind,
                );
                if let Some(p) = sys.process(pid) {
                    rss.push(p.memory());
                    // The first CPU reading has no interval behind it.
                    if !first {
                        cpu.push(f64::from(p.cpu_usage()));
                    }
                    first = false;
                }
            }
            let mean = |v: &[f64]| {
                if v.is_empty() {
                    0.0
                } else {
                    v.iter().sum::<f64>() / v.len() as f64
                }
            };
            BenchResources {
                rss_peak_bytes: rss.iter().copied().max().unwrap_or(0),
                rss_mean_bytes: if rss.is_empty() {
                    0
                } else {
                    rss.iter().sum::<u64>() / rss.len() as u64
                },
                cpu_percent_mean: mean(&cpu),
                cpu_percent_peak: cpu.iter().copied().fold(0.0, f64::max),
                samples: rss.len() as u32,
                gpu: gpu_status(),
            }
        });
        Self { stop, task }
    }

    pub async fn finish(self) -> BenchResources {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}
