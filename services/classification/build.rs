//! Generates the gRPC code for `proto/classifier.proto` and a file descriptor set for the
//! reflection service (needs `protoc`: Debian's `protobuf-compiler`).

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("classifier_descriptor.bin"))
        .compile_protos(&["../../proto/classifier.proto"], &["../../proto"])?;
    Ok(())
}
