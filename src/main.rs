fn main() -> anyhow::Result<()> {
    let cfg = sipedge::config::Config::default_config();
    sipedge::run(cfg, None)
}
