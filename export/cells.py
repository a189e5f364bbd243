"""``keras.layers.RNN`` over gated cells (one cell or a stacked list) as native RNN nodes.

A stacked list becomes a chain of single-direction nodes: each node reads the previous one's
per-step output ``Y`` (aligned with the input steps, so a ``go_backwards`` chain is a chain of
``reverse`` nodes). ``Bidirectional`` over such a layer is a forward chain and a reverse chain,
merged like Keras merges them. Lengths, masks, ``return_state``, ``initial_state`` and streaming
work as for :class:`~keras_gates.GatedLSTM`/:class:`~keras_gates.GatedGRU`.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from .errors import ExportError
from .handlers import Cut, Handler, check_exportable, find_handler, merge_directions


def gated_cells(layer: Any) -> list[Any] | None:
    """The gated cells of a plain ``keras.layers.RNN`` made only of them, else ``None``."""
    if not isinstance(layer, keras.layers.RNN) or find_handler(layer) is not None:
        return None  # a gated layer converts by its own handler
    cell = layer.cell
    cells = list(cell.cells) if isinstance(cell, keras.layers.StackedRNNCells) else [cell]
    if cells and all(find_handler(c) is not None for c in cells):
        return cells
    return None


def is_cell_rnn(layer: Any) -> bool:
    """``RNN`` over gated cells, or ``Bidirectional`` around one."""
    if isinstance(layer, keras.layers.Bidirectional):
        return gated_cells(layer.forward_layer) is not None
    return gated_cells(layer) is not None


def call(run: Any, op: Any, args: tuple, kwargs: dict) -> Any:
    """Run ``op`` (see :func:`is_cell_rnn`) as chains of cut nodes in ``run`` (a
    ``cutting._Run``); returns Keras' outputs."""
    gated = run.enter_call(op, args, kwargs)
    flat_initial = tf.nest.flatten(gated.initial) if gated.initial is not None else None
    bidi = isinstance(op, keras.layers.Bidirectional)
    if bidi:
        chains = [(op.forward_layer, "forward"), (op.backward_layer, "reverse")]
    else:
        chains = [(op, "reverse" if op.go_backwards else "forward")]
    results, offset = [], 0
    for rnn, direction in chains:
        cells = gated_cells(rnn)
        per_cell = []
        for cell in cells:
            n = len(_handler(cell).state_names)
            per_cell.append(flat_initial[offset : offset + n] if flat_initial else None)
            offset += n
        prefix = (
            f"{op.name}.{'backward' if direction == 'reverse' else 'forward'}" if bidi else op.name
        )
        results.append(_chain(run, op, rnn, cells, direction, prefix, gated, per_cell))
    if bidi:
        (y, states), (y_rev, states_rev) = results
        outputs = [*merge_directions(op.merge_mode, y, y_rev), *states, *states_rev]
    else:
        (y, states) = results[0]
        if op.return_sequences and op.go_backwards:  # Keras returns steps in processing order
            y = tf.reverse_sequence(y, gated.seq_lens, seq_axis=1, batch_axis=0)
        outputs = [y, *states]
    return run.leave_call(op, gated, outputs)


def _handler(cell: Any) -> Handler:
    handler = find_handler(cell)
    if handler is None:  # gated_cells() admits registered cells only
        raise ExportError(f"Cell {cell.name!r} ({type(cell).__name__}) has no export handler.")
    return handler


def _chain(run, op, rnn, cells, direction, prefix, gated, initial) -> tuple[Any, list]:
    """One direction: a node per cell, each reading the previous node's aligned ``Y``
    (``gated``: the call, a ``cutting.GatedCall``)."""
    h, states, ph = gated.x, [], {}
    for k, cell in enumerate(cells):
        last = k == len(cells) - 1
        name = prefix if len(cells) == 1 else f"{prefix}.cell{k}"

        def plan(index, cell=cell, last=last, name=name):
            return _plan(run.streaming, op, rnn, cell, index, direction, name, last)

        cut = run.next_cut(op, plan, h, initial[k])
        ph = run.connect(cut, h, gated.seq_lens, initial[k])
        if "Y" in cut.outputs:
            h = tf.transpose(ph["Y"][:, 0], [1, 0, 2])
        if rnn.return_state:
            states.extend(ph[f"Y_{s}"][0] for s in _handler(cell).state_names)
        run.add_state_outputs(cut, ph)
    y = h if rnn.return_sequences else ph["Y_h"][0]
    return y, states


def _plan(streaming, op, rnn, cell, index, direction, name, last) -> Cut:
    check_exportable(op)
    check_exportable(cell)
    if streaming and direction == "reverse":
        raise ExportError(
            f"Layer {op.name!r} ({type(op).__name__}) runs backwards (go_backwards=True or "
            "Bidirectional) and cannot be exported with `streaming=True`: a chunk would be read "
            "end to start. Export without streaming."
        )
    handler = _handler(cell)
    sequences = not last or rnn.return_sequences  # a cell inside the chain feeds the next
    return Cut(
        index=index,
        layer=op,
        handler=handler,
        direction=direction,
        units=int(cell.units),
        outputs=handler.needed_outputs(sequences, rnn.return_state, streaming),
        state_names=handler.state_names if streaming else (),
        name=name,
        cells=(cell,),
    )
