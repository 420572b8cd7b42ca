//! Writes the testapp image as an OCI layout: `cargo run -p wharf-testsupport --example
//! testapp_image -- DIR [TAG]`, then `wharf images import DIR/testapp-oci --tag testapp:TAG`.

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or_else(|| anyhow::anyhow!("usage: testapp_image DIR [TAG]"))?;
    let tag = args.next().unwrap_or_else(|| "latest".to_owned());
    std::fs::create_dir_all(&dir)?;
    let image = wharf_testsupport::testapp_image(std::path::Path::new(&dir), &tag)?;
    println!("{}", image.layout.display());
    Ok(())
}
