//! `ztmesh-coordinator`: the control server and its admin CLI.

fn main() -> anyhow::Result<()> {
    Ok(())
}
