//! The fusedrop command-line tool.
fn main() {
    println!("fusedrop: the demonstration is not written yet");
}
