//! `ztmesh`: the client daemon and its CLI.

fn main() -> anyhow::Result<()> {
    Ok(())
}
