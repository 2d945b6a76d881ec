//! The `pgq-basebackup` command: take a base backup over ordinary connections, or verify one.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pgq_basebackup::{BackupOptions, Checkpoint, ManifestChecksum, Progress, VerifyReport};
use pgq_core::Dsn;

/// A parallel PostgreSQL base backup over ordinary SQL connections.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Copy a running cluster into DEST.
    Backup {
        /// Connection string of the source (any database).
        #[arg(short = 'd', long = "dbname", env = "PGQ_DSN", hide_env_values = true)]
        dsn: String,
        /// Destination directory (created when missing; must be empty unless --force).
        #[arg(short = 'D', long = "pgdata")]
        dest: PathBuf,
        /// Connections fetching files in parallel.
        #[arg(short = 'j', long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
        jobs: u16,
        /// Starting checkpoint: fast (immediate) or spread.
        #[arg(short = 'c', long, value_enum, default_value_t = CheckpointArg::Fast)]
        checkpoint: CheckpointArg,
        /// Empty a non-empty DEST first; only a PostgreSQL data directory that no server runs
        /// on, or an earlier copy made by this tool, is emptied (likewise a mapped
        /// tablespace's NEW directory, which may hold only PG_* directories).
        #[arg(long)]
        force: bool,
        /// Label recorded in backup_label.
        #[arg(short = 'l', long, default_value = "pgq-basebackup")]
        label: String,
        /// Make the copy a streaming standby of the source: a permanent slot,
        /// standby.signal, primary_conninfo and primary_slot_name.
        #[arg(short = 'R', long)]
        standby: bool,
        /// Replication slot name (default pgq_basebackup_<pid>).
        #[arg(short = 'S', long)]
        slot: Option<String>,
        /// Limit for file data, in kB/s or with a suffix k or M (e.g. 20M).
        #[arg(short = 'r', long, value_parser = pgq_basebackup::parse_rate)]
        max_rate: Option<u64>,
        /// Continue an interrupted backup in DEST, keeping chunks the source confirms (DEST
        /// must be an earlier copy made by this tool, or a data directory).
        #[arg(long, conflicts_with = "force")]
        resume: bool,
        /// Bytes per pg_read_binary_file call, in kB or with a suffix k or M.
        #[arg(long, default_value = "8M", value_parser = pgq_basebackup::parse_rate)]
        chunk_size: u64,
        /// Checksum of each file in backup_manifest: NONE, CRC32C, SHA224, SHA256, SHA384 or
        /// SHA512 (case-insensitive).
        #[arg(long, default_value_t = ManifestChecksum::Crc32c)]
        manifest_checksums: ManifestChecksum,
        /// Store files compressed: zstd or zstd:LEVEL (1-22, default 3); see `restore`.
        #[arg(short = 'Z', long, value_parser = parse_compress, conflicts_with = "resume")]
        compress: Option<i32>,
        /// Put the tablespace at OLD into NEW (repeatable); others stay inside DEST.
        #[arg(short = 'T', long = "tablespace-mapping", value_name = "OLD=NEW", value_parser = parse_mapping)]
        tablespace_mapping: Vec<(PathBuf, PathBuf)>,
        /// Never draw the progress bar (it is drawn only on a terminal anyway).
        #[arg(long)]
        no_progress: bool,
    },
    /// Unpack a compressed copy into a startable directory, then verify it.
    Restore {
        /// The compressed copy.
        src: PathBuf,
        /// Where the startable directory goes (must not exist or be empty).
        dest: PathBuf,
    },
    /// Check a copy against its backup_manifest; lists every mismatch.
    Verify {
        /// The copy's directory.
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CheckpointArg {
    Fast,
    Spread,
}

/// Bytes as MiB, for messages.
fn mib_of(bytes: u64) -> f64 {
    f64::from(u32::try_from(bytes / 1024).unwrap_or(u32::MAX)) / 1024.0
}

/// A bar with bytes, rate and ETA on stderr, drawn only when stderr is a terminal; a task
/// keeps it in step with the backup's counters.
fn progress_bar(progress: Arc<Progress>) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let shown = bar.clone();
    let task = tokio::spawn(async move {
        loop {
            shown.set_length(progress.total());
            shown.set_position(progress.done());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (bar, task)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Backup {
            dsn,
            dest,
            jobs,
            checkpoint,
            force,
            label,
            standby,
            slot,
            max_rate,
            resume,
            compress,
            tablespace_mapping,
            chunk_size,
            manifest_checksums,
            no_progress,
        } => {
            let dsn = Dsn::parse(&dsn).context("invalid connection string")?;
            let mut opts = BackupOptions::new(dsn, dest);
            opts.jobs = usize::from(jobs);
            opts.checkpoint = match checkpoint {
                CheckpointArg::Fast => Checkpoint::Fast,
                CheckpointArg::Spread => Checkpoint::Spread,
            };
            opts.force = force;
            opts.label = label;
            opts.chunk_size = chunk_size;
            opts.manifest_checksum = manifest_checksums;
            opts.standby = standby;
            opts.slot = slot;
            opts.max_rate = max_rate;
            opts.resume = resume;
            opts.compress = compress;
            opts.tablespace_mapping = tablespace_mapping;
            let bar = (!no_progress).then(|| progress_bar(Arc::clone(&opts.progress)));
            let result = pgq_basebackup::backup(opts).await;
            if let Some((bar, task)) = bar {
                task.abort();
                bar.finish_and_clear();
            }
            let summary = result?;
            let secs = summary.elapsed.as_secs_f64();
            let mib = mib_of(summary.bytes);
            println!(
                "backup complete: {} ({mib:.1} MiB in {secs:.2} s, {:.1} MiB/s; {} WAL segments; WAL {} to {} on timeline {})",
                summary.dest.display(),
                mib / secs.max(1e-9),
                summary.wal_segments,
                summary.start_lsn,
                summary.stop_lsn,
                summary.timeline
            );
            if summary.reused_bytes > 0 {
                println!(
                    "  resumed: {:.1} MiB kept after the source confirmed them",
                    mib_of(summary.reused_bytes)
                );
            }
            if let Some(slot) = &summary.slot {
                println!("  standby: streams from the source through slot {slot}");
            }
            if summary.password_left_out {
                eprintln!(
                    "warning: the connection string's password is not written into the copy; \
                     primary_conninfo has none, so give the standby's server user a password \
                     file entry for the source (or take the backup with passfile= or \
                     PGPASSFILE instead of a password, and primary_conninfo names that file)"
                );
            }
            for name in &summary.config_written {
                println!(
                    "  {name}: fetched or written (the source keeps it outside its data directory)"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { src, dest } => {
            let report = tokio::task::spawn_blocking(move || pgq_basebackup::restore(&src, &dest))
                .await
                .context("restore task")??;
            print_report(&report, "restored and verified")
        }
        Command::Verify { dir } => {
            let report = tokio::task::spawn_blocking(move || pgq_basebackup::verify(&dir))
                .await
                .context("verify task")??;
            print_report(&report, "backup verified")
        }
    }
}

/// Prints every problem, or the success line; exit code 1 when there are problems.
fn print_report(report: &VerifyReport, success: &str) -> anyhow::Result<ExitCode> {
    for problem in &report.problems {
        println!("{problem}");
    }
    if report.is_ok() {
        println!(
            "{success}: {} files match the manifest",
            report.files_checked
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} problems", report.problems.len());
        Ok(ExitCode::FAILURE)
    }
}

/// `OLD=NEW`, both absolute.
fn parse_mapping(text: &str) -> Result<(PathBuf, PathBuf), String> {
    let (old, new) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid mapping {text:?}: use OLD=NEW"))?;
    let (old, new) = (PathBuf::from(old), PathBuf::from(new));
    if old.is_absolute() && new.is_absolute() {
        Ok((old, new))
    } else {
        Err(format!(
            "invalid mapping {text:?}: both directories must be absolute"
        ))
    }
}

/// `zstd` or `zstd:LEVEL`.
fn parse_compress(text: &str) -> Result<i32, String> {
    match text.split_once(':') {
        None if text == "zstd" => Ok(3),
        Some(("zstd", level)) => match level.parse::<i32>() {
            Ok(level) if (1..=22).contains(&level) => Ok(level),
            _ => Err(format!("invalid zstd level {level:?}: use 1 to 22")),
        },
        _ => Err(format!(
            "unsupported compression {text:?}: use zstd or zstd:LEVEL"
        )),
    }
}
