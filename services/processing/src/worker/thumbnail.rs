//! The JPEG thumbnail: the image scaled down (never up) so its longest side is at most
//! [`THUMBNAIL_SIZE`](super::THUMBNAIL_SIZE).

use std::{fs::File, io::BufWriter, path::Path};

use image::{DynamicImage, codecs::jpeg::JpegEncoder};

use super::{Failure, THUMBNAIL_SIZE, internal};
use crate::protocol::THUMBNAIL_FILE;

const QUALITY: u8 = 80;

pub(super) fn write(image: &DynamicImage, dir: &Path) -> Result<(), Failure> {
    let small = if image.width() > THUMBNAIL_SIZE || image.height() > THUMBNAIL_SIZE {
        image.thumbnail(THUMBNAIL_SIZE, THUMBNAIL_SIZE).to_rgb8()
    } else {
        image.to_rgb8()
    };
    let file = File::create(dir.join(THUMBNAIL_FILE)).map_err(internal("create the thumbnail"))?;
    let mut out = BufWriter::new(file);
    JpegEncoder::new_with_quality(&mut out, QUALITY).encode_image(&small).map_err(internal("encode the thumbnail"))?;
    out.into_inner().map_err(|e| e.into_error()).map_err(internal("write the thumbnail"))?;
    Ok(())
}
