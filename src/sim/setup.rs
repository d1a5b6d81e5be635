//! The files `promoter sim` writes for its users: `promoter.toml` (ready for every `promoter`
//! command) and `sim.json` (ports and the admin URL, for scripts).

use anyhow::Context;
use serde_json::json;

use super::{Sim, SimOptions};

/// A TOML string literal.
fn lit(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn site_section(
    out: &mut String,
    header: &str,
    site: &super::SimSite,
    sim: &Sim,
    opts: &SimOptions,
) {
    let certs = site
        .certificates()
        .strip_prefix(&sim.dir)
        .map(|p| p.to_string_lossy().replace('\\', "/"))
        .unwrap_or_else(|_| site.certificates().display().to_string());
    out.push_str(&format!(
        "{header}\nalias = {}\nhost = \"localhost\"\nport = {}\ncertificates = {}\n",
        lit(site.alias()),
        site.port(),
        lit(&certs)
    ));
    if let Some(n) = &opts.server_name {
        out.push_str(&format!(
            "# The simulated server certificate was issued to {n} only: with host = \"localhost\"\n\
             # verification fails until this line is uncommented.\n# server_name = {}\n",
            lit(n)
        ));
    }
    out.push('\n');
}

/// Writes `promoter.toml` for the running sites. Paths are relative to the simulator's folder.
pub fn write_config(sim: &Sim, opts: &SimOptions) -> anyhow::Result<()> {
    let mut out = String::from(
        "# Written by `promoter sim` for its simulated sites; paths are relative to this folder.\n\
         # config/promoter.example.toml documents every key.\n\n",
    );
    out.push_str(&format!(
        "[listener]\nbind = {}\n\n[data]\ndir = \"data\"\n\n",
        lit(opts.listener_bind.as_deref().unwrap_or("127.0.0.1:0"))
    ));
    for (i, s) in sim.sites.iter().enumerate() {
        let header = if i == 0 { "[local]" } else { "[[remote]]" };
        site_section(&mut out, header, s, sim, opts);
    }
    out.push_str(
        "[email]\nenabled = true\ntransport = \"file\"\nfolder = \"mail\"\n\
         from = \"Promoter <promoter@example.com>\"\n\
         admin_recipients = [\"admin@example.com\"]\n\
         fallback_recipients = [\"promotions@example.com\"]\n\n\
         [versioning]\nenabled = true\nbackend = \"folder\"\nfolder = \"versions\"\n\n\
         [audit]\nfolder = \"audit\"\n\n[logging]\nfolder = \"logs\"\n",
    );
    std::fs::write(&sim.config_path, out)
        .with_context(|| format!("cannot write {}", sim.config_path.display()))
}

/// Writes `sim.json`: the admin URL and every site's port, URL and certificate folder.
pub fn write_sim_json(sim: &Sim) -> anyhow::Result<()> {
    let v = json!({
        "adminUrl": sim.admin_url,
        "config": sim.config_path,
        "sites": sim.sites.iter().enumerate().map(|(i, s)| json!({
            "alias": s.alias(),
            "local": i == 0,
            "port": s.port(),
            "baseUrl": s.base_url(),
            "certificates": s.certificates(),
        })).collect::<Vec<_>>()
    });
    let p = sim.dir.join("sim.json");
    std::fs::write(&p, serde_json::to_string_pretty(&v)?)
        .with_context(|| format!("cannot write {}", p.display()))
}
