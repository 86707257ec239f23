"""A decision tree drawn left to right with the path of a decision highlighted, so the
architect sees the branches not taken as well as the one that was."""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

from workbench.figures import PALETTE
from workbench.plan.trees import TREES, Decision, Leaf, Question

PATH, OFF_PATH = PALETTE[1], "#b8b8b8"
ROW_PX = 34


@dataclass(frozen=True, slots=True)
class Node:
    id: tuple[str, ...]          # the answers from the root, "key=answer": unique per position
    label: str
    hover: str
    x: float                     # depth
    y: float                     # leaf order (leaves) or the mean of its children
    leaf: bool


@dataclass(frozen=True, slots=True)
class Edge:
    parent: tuple[str, ...]
    child: tuple[str, ...]
    answer: str


def tree_layout(tree: str) -> tuple[list[Node], list[Edge]]:
    """Positions for every node of the tree. Shared subtrees (a leaf reached by two branches)
    are drawn once per position, since each is a different path."""
    nodes: list[Node] = []
    edges: list[Edge] = []
    next_row = [0]

    def walk(node: Question | Leaf, depth: int, id_: tuple[str, ...]) -> float:
        if isinstance(node, Leaf):
            y = float(next_row[0])
            next_row[0] += 1
            hover = "<br>".join([f"<b>{node.recommendation}</b>", *node.reasons])
            nodes.append(Node(id_, node.recommendation, hover, depth, y, True))
            return y
        ys = []
        for answer, branch in node.answers.items():
            child = (*id_, f"{node.key}={answer}")
            ys.append(walk(branch.then, depth + 1, child))
            edges.append(Edge(id_, child, answer))
        y = sum(ys) / len(ys)
        nodes.append(Node(id_, node.key.replace("_", " "), node.text, depth, y, False))
        return y

    walk(TREES[tree].root, 0, ())
    return nodes, edges


def path_ids(decision: Decision) -> set[tuple[str, ...]]:
    """The node ids the decision passed through, root and leaf included."""
    steps = [f"{s.key}={s.answer}" for s in decision.path]
    return {tuple(steps[:i]) for i in range(len(steps) + 1)}


def tree_figure(tree: str, decision: Decision | None = None) -> go.Figure:
    nodes, edges = tree_layout(tree)
    at = {n.id: n for n in nodes}
    taken = path_ids(decision) if decision else set()
    fig = go.Figure()
    for on in (False, True):  # grey first, so the path is drawn on top
        xs, ys, label_x, label_y, labels = [], [], [], [], []
        for e in (e for e in edges if (e.child in taken) == on):
            p, c = at[e.parent], at[e.child]
            mid = (p.x + c.x) / 2
            xs += [p.x, mid, mid, c.x, None]   # an elbow: across, down, across
            ys += [p.y, p.y, c.y, c.y, None]
            label_x.append((mid + c.x) / 2)  # below the line: the node's name sits above
            label_y.append(c.y)
            labels.append(e.answer)
        colour = PATH if on else OFF_PATH
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip",
                                 line=dict(color=colour, width=3 if on else 1)))
        fig.add_trace(go.Scatter(x=label_x, y=label_y, mode="text", text=labels,
                                 textposition="bottom center", hoverinfo="skip",
                                 textfont=dict(size=11, color=colour)))
    for leaf in (False, True):
        group = [n for n in nodes if n.leaf == leaf]
        fig.add_trace(go.Scatter(
            x=[n.x for n in group], y=[n.y for n in group], mode="markers+text",
            text=[f"<b>{n.label}</b>" if n.id in taken else n.label for n in group],
            textposition="middle right" if leaf else "top center",
            hovertext=[n.hover for n in group], hoverinfo="text",
            marker=dict(symbol="square" if leaf else "circle", size=11,
                        color=[PATH if n.id in taken else OFF_PATH for n in group],
                        line=dict(color="white", width=1)),
            textfont=dict(size=12 if leaf else 11)))
    leaves = sum(n.leaf for n in nodes)
    depth = max(n.x for n in nodes)
    title = f"{tree} tree" + (f": {decision.recommendation}" if decision else "")
    fig.update_layout(
        title=title, showlegend=False, height=ROW_PX * leaves + 110,
        margin=dict(t=50, b=20, l=20, r=20), plot_bgcolor="white")
    # Leaves' labels run to the right of the deepest level: leave them room.
    fig.update_xaxes(visible=False, range=[-0.6, depth + 2.6])
    fig.update_yaxes(visible=False, autorange="reversed", range=None)
    return fig
