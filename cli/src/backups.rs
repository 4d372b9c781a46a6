//! `pgplane backups …`: a tenant's logical backups from a terminal: list, take, show, delete,
//! download (streamed to a file, its SHA-256 checked on the way) or a signed link to download
//! elsewhere, restore in place or into a new database, and the manual quota.

use anyhow::{bail, Context, Result};
use reqwest::header::{CONTENT_DISPOSITION, CONTENT_LENGTH};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::client::{answer, human_size, print_table, Client, ClientArgs};

#[derive(clap::Args)]
pub struct BackupsArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: BackupsCommand,
}

#[derive(clap::Subcommand)]
enum BackupsCommand {
    /// Lists a database's backups, newest first.
    List {
        database: String,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Takes a backup now (counts against the plan's manual quota).
    Create {
        database: String,
        /// Wait until it is done, then show it.
        #[arg(long)]
        wait: bool,
    },
    /// Shows one backup.
    Show { database: String, backup: String },
    /// Deletes a backup.
    Delete { database: String, backup: String },
    /// Downloads a backup (a `pg_dump -Fc` archive for `pg_restore`), checking its SHA-256.
    Download {
        database: String,
        backup: String,
        /// The file to write (`-`: standard output). By default the name the API suggests,
        /// e.g. `main-20261129T104207Z.dump`, in the current folder.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Print a signed link that downloads it without a token instead (for `curl -o` on
        /// another machine, or a browser).
        #[arg(long)]
        link: bool,
        /// How long the link stays valid, in seconds (at most a day).
        #[arg(long, default_value_t = 900, requires = "link")]
        expires_in: u32,
    },
    /// Restores a backup: into the database it was taken of (its content is replaced, the
    /// connection URL stays), into another database of the same tenant (`--to`), or into a new
    /// database (`--new NAME --plan PLAN`).
    Restore {
        database: String,
        backup: String,
        /// Replace the content of this database instead (same tenant).
        #[arg(long, conflicts_with = "new")]
        to: Option<String>,
        /// Order a new database of this name and restore into it.
        #[arg(long, requires = "plan")]
        new: Option<String>,
        /// The new database's plan.
        #[arg(long, requires = "new")]
        plan: Option<String>,
        /// Wait until the restore is done.
        #[arg(long)]
        wait: bool,
    },
    /// The plan's manual backup quota: used, remaining today, next allowed, next evicted.
    Quota { database: String },
}

pub async fn run(args: BackupsArgs) -> Result<()> {
    let api = Client::connect(&args.client).await?;
    match args.command {
        BackupsCommand::List { database, limit } => {
            let page = api.get(&format!("/v1/databases/{database}/backups?limit={limit}")).await?;
            if api.json {
                return print_json(&page);
            }
            let items = page["items"].as_array().cloned().unwrap_or_default();
            print_table(
                &["ID", "METHOD", "STATUS", "STARTED", "SIZE", "VERIFIED"],
                &items.iter().map(row).collect::<Vec<_>>(),
            );
            Ok(())
        }
        BackupsCommand::Create { database, wait } => {
            let op = api.call(Method::POST, &format!("/v1/databases/{database}/backups"), None).await?;
            let op_id = text(&op["id"]);
            if !wait {
                if api.json {
                    return print_json(&op);
                }
                println!("backup started: operation {op_id} (pgplane backups list {database})");
                return Ok(());
            }
            api.wait_operation(&op_id, Duration::from_secs(24 * 3600)).await?;
            let page = api.get(&format!("/v1/databases/{database}/backups?limit=100")).await?;
            let backup = page["items"]
                .as_array()
                .and_then(|items| items.iter().find(|b| b["operation_id"] == op["id"]).cloned())
                .context("the finished operation's backup is not listed")?;
            show(&api, &backup)
        }
        BackupsCommand::Show { database, backup } => {
            show(&api, &api.get(&format!("/v1/databases/{database}/backups/{backup}")).await?)
        }
        BackupsCommand::Delete { database, backup } => {
            api.call(Method::DELETE, &format!("/v1/databases/{database}/backups/{backup}"), None).await?;
            println!("backup {backup} deleted");
            Ok(())
        }
        BackupsCommand::Download { database, backup, output, link, expires_in } => {
            if link {
                let path = format!("/v1/databases/{database}/backups/{backup}/link");
                let link = api.call(Method::POST, &path, Some(&json!({ "expires_in": expires_in }))).await?;
                if api.json {
                    return print_json(&link);
                }
                println!("{}", text(&link["url"]));
                eprintln!("valid until {} (anyone holding it can download the backup)", text(&link["expires_at"]));
                return Ok(());
            }
            download(&api, &database, &backup, output).await
        }
        BackupsCommand::Restore { database, backup, to, new, plan, wait } => {
            let body = match (to, new, plan) {
                (_, Some(name), Some(plan)) => json!({ "target": "new_database", "name": name, "plan": plan }),
                (Some(to), _, _) => json!({ "target": "in_place", "database_id": to }),
                _ => json!({ "target": "in_place" }),
            };
            let path = format!("/v1/databases/{database}/backups/{backup}/restore");
            let op = api.call(Method::POST, &path, Some(&body)).await?;
            let (op_id, target) = (text(&op["id"]), text(&op["database_id"]));
            if wait {
                api.wait_operation(&op_id, Duration::from_secs(24 * 3600)).await?;
            }
            if api.json {
                return print_json(&op);
            }
            let state = if wait { "done" } else { "started" };
            println!("restore of {backup} into database {target} {state}: operation {op_id}");
            Ok(())
        }
        BackupsCommand::Quota { database } => {
            let q = api.get(&format!("/v1/databases/{database}/backup-quota")).await?;
            if api.json {
                return print_json(&q);
            }
            println!("manual backups kept:  {} of {}", q["used"], q["max_total"]);
            println!("left today (UTC):     {} of {} a day", q["remaining_today"], q["max_per_day"]);
            println!(
                "next allowed at:      {}",
                q["next_allowed_at"].as_str().unwrap_or("never (the plan has no manual backups)")
            );
            println!("next one evicts:      {}", q["next_evicts"].as_str().unwrap_or("nothing"));
            Ok(())
        }
    }
}

fn text(v: &Value) -> String {
    v.as_str().map(str::to_string).unwrap_or_else(|| if v.is_null() { "-".into() } else { v.to_string() })
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn size(v: &Value) -> String {
    v.as_u64().map(human_size).unwrap_or_else(|| "-".into())
}

fn verified(b: &Value) -> String {
    match (b["verification"].as_str(), b["verified_at"].as_str()) {
        (Some(result), Some(at)) => format!("{result} {at}"),
        _ => "-".into(),
    }
}

fn row(b: &Value) -> Vec<String> {
    vec![
        text(&b["id"]),
        text(&b["method"]),
        text(&b["status"]),
        text(&b["started_at"]),
        size(&b["size_bytes"]),
        verified(b),
    ]
}

fn show(api: &Client, b: &Value) -> Result<()> {
    if api.json {
        return print_json(b);
    }
    let fields = [
        ("id", text(&b["id"])),
        ("database", text(&b["database_id"])),
        ("method", text(&b["method"])),
        ("status", text(&b["status"])),
        ("error", text(&b["error"])),
        ("member", text(&b["member"])),
        ("postgres", text(&b["postgres_version"])),
        ("started", text(&b["started_at"])),
        ("finished", text(&b["finished_at"])),
        ("size", size(&b["size_bytes"])),
        ("sha256", text(&b["sha256"])),
        ("verified", verified(b)),
    ];
    for (name, value) in fields {
        if value != "-" || ["status", "size"].contains(&name) {
            println!("{name:<9} {value}");
        }
    }
    Ok(())
}

/// The file name of `Content-Disposition: attachment; filename="…"`, kept to a plain name.
fn suggested_name(res: &reqwest::Response) -> Option<String> {
    let value = res.headers().get(CONTENT_DISPOSITION)?.to_str().ok()?;
    let name = value.split("filename=").nth(1)?.trim_matches('"');
    (!name.is_empty() && !name.contains('/') && !name.starts_with('.')).then(|| name.to_string())
}

/// Streams the backup to `output` (a `.part` file renamed once whole and checked) or stdout.
async fn download(api: &Client, database: &str, backup: &str, output: Option<PathBuf>) -> Result<()> {
    let path = format!("/v1/databases/{database}/backups/{backup}/download");
    let mut res = api.request(Method::GET, &path).send().await.with_context(|| format!("GET {path}"))?;
    if !res.status().is_success() {
        answer(res).await?;
        bail!("the download failed");
    }
    let expected = res.headers().get(pgplane_api::SHA256_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let length = res.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let to_stdout = output.as_deref() == Some(std::path::Path::new("-"));
    let file =
        output.unwrap_or_else(|| PathBuf::from(suggested_name(&res).unwrap_or_else(|| format!("{backup}.dump"))));
    let part = file.with_extension("dump.part");
    let mut sink: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?,
        ))
    };
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    while let Some(chunk) = res.chunk().await.context("downloading")? {
        hasher.update(&chunk);
        sink.write_all(&chunk).context("writing the backup")?;
        written += chunk.len() as u64;
    }
    sink.flush()?;
    drop(sink);
    let sha256 = hex::encode(hasher.finalize());
    let whole = length.is_none_or(|l| l == written);
    if !whole || expected.as_deref().is_some_and(|e| e != sha256) {
        if !to_stdout {
            let _ = std::fs::remove_file(&part);
        }
        bail!("the download is damaged ({written} bytes, SHA-256 {sha256}; expected {length:?} bytes, {expected:?}): try again");
    }
    if !to_stdout {
        std::fs::rename(&part, &file).with_context(|| format!("renaming {} to {}", part.display(), file.display()))?;
        eprintln!("{} written: {}, SHA-256 {sha256} (checked)", file.display(), human_size(written));
    }
    Ok(())
}
