//! Document texts, one module per class, all drawing on [`common`]'s shared vocabulary.

mod common;
mod contract;
mod invoice;
mod letter;
mod receipt;
mod report;
mod resume;
pub(crate) mod rng;

use crate::DocClass;
use rng::Rng;

/// A document of `class` from `seed`. The class is mixed into the seed, so one seed gives unrelated
/// documents for different classes.
pub(crate) fn generate(class: DocClass, seed: u64) -> String {
    let salt = match class {
        DocClass::Invoice => 0x01,
        DocClass::Receipt => 0x02,
        DocClass::Contract => 0x03,
        DocClass::Resume => 0x04,
        DocClass::Letter => 0x05,
        DocClass::Report => 0x06,
    };
    let mut rng = Rng::new(rng::mix(seed ^ rng::mix(salt)));
    match class {
        DocClass::Invoice => invoice::generate(&mut rng),
        DocClass::Receipt => receipt::generate(&mut rng),
        DocClass::Contract => contract::generate(&mut rng),
        DocClass::Resume => resume::generate(&mut rng),
        DocClass::Letter => letter::generate(&mut rng),
        DocClass::Report => report::generate(&mut rng),
    }
}
