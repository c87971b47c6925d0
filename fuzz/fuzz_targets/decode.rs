//! Fuzzes the whole `duplex tap` decoder: both directions of a connection in arbitrary
//! chunks (see `duplex_wire::fuzzing` for the input format). Seeds: `corpus/decode/`,
//! made by `make_corpus.py` (synthetic frames and captured `duplex echo` sessions).

#![no_main]

use std::sync::OnceLock;

use duplex_wire::Schema;
use libfuzzer_sys::fuzz_target;

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let mut schema = Schema::new();
        schema
            .add_descriptor_set(duplex_proto::FILE_DESCRIPTOR_SET)
            .expect("built-in descriptors");
        schema
    })
}

fuzz_target!(|data: &[u8]| {
    duplex_wire::fuzzing::run(data, schema());
});
