//! `clawos-layer-matrix`: shows, in the booted appliance, that each sandbox
//! layer alone stops the attacks it claims (test-only; see
//! clawos_inguest::matrix). Exit status 0 when every attack runs with no
//! layer and every claimed layer stops it; 1 otherwise.

use clap::{Parser, Subcommand};
use clawos_inguest::matrix::{self, Attack, CellArgs, Layer};

#[derive(Parser)]
#[command(
    name = "clawos-layer-matrix",
    about = "Run each attack with no layer, then under each layer that claims to stop it with every other layer off, and print the matrix (test-only: never in the image)"
)]
struct Cli {
    /// Only these attacks (default: all).
    #[arg(long, value_enum)]
    attack: Vec<Attack>,
    /// Only this layer (and not the baseline unless it is `none`).
    #[arg(long, value_enum)]
    layer: Option<Layer>,
    #[command(subcommand)]
    cell: Option<Cell>,
}

#[derive(Subcommand)]
enum Cell {
    /// One attack under one layer, in this process (the matrix runs each cell so).
    Cell {
        #[arg(value_enum)]
        attack: Attack,
        #[arg(value_enum)]
        layer: Layer,
        #[command(flatten)]
        args: CellArgs,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Some(Cell::Cell {
        attack,
        layer,
        args,
    }) = cli.cell
    {
        matrix::cell(attack, layer, &args);
    }
    let attacks = if cli.attack.is_empty() {
        Attack::ALL.to_vec()
    } else {
        cli.attack
    };
    std::process::exit(if matrix::run(&attacks, cli.layer) {
        0
    } else {
        1
    });
}
