"""Finding the tags' nodes on a connected server: namespace URIs to indexes, browse paths to ids.

Done at every connect, not once: a server that restarts may renumber its namespaces, which is
exactly why configs name them by URI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from asyncua import Client, ua

from drivers.opcua.config import OpcuaTag, browse_segments, parse_node
from drivers.opcua.convert import status_name


@dataclass(frozen=True, slots=True)
class Resolved:
    """A tag and its node on this server, or why it has none."""

    tag: OpcuaTag
    node: ua.NodeId | None
    problem: str | None = None


class Browser:
    """Browse-name lookups from Objects, each level asked once however many tags share it."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._children: dict[ua.NodeId, list[ua.ReferenceDescription]] = {}

    async def children(self, node: ua.NodeId) -> list[ua.ReferenceDescription]:
        found = self._children.get(node)
        if found is None:
            found = list(
                await self._client.get_node(node).get_references(
                    refs=ua.ObjectIds.HierarchicalReferences,
                    direction=ua.BrowseDirection.Forward,
                    includesubtypes=True,
                )
            )
            self._children[node] = found
        return found

    async def resolve(self, path: str) -> ua.NodeId | str:
        """The node at ``path``, or the reason there is none."""
        current = ua.NodeId(ua.ObjectIds.ObjectsFolder, 0)
        walked: list[str] = []
        for ns, name in browse_segments(path):
            matches = [
                ref.NodeId
                for ref in await self.children(current)
                if ref.BrowseName.Name == name
                and (ns is None or ref.BrowseName.NamespaceIndex == ns)
            ]
            where = "/".join(walked) or "Objects"
            if not matches:
                return f"no {name!r} under {where}"
            if len({(m.NamespaceIndex, m.Identifier) for m in matches}) > 1:
                return f"{name!r} under {where} is ambiguous: prefix the namespace index (2:{name})"
            current = ua.NodeId(matches[0].Identifier, matches[0].NamespaceIndex)
            walked.append(name)
        return current


async def resolve_tags(client: Client, tags: Sequence[OpcuaTag]) -> list[Resolved]:
    """Every tag's node id on this server; a tag that cannot be found gets the reason."""
    namespaces = await client.get_namespace_array()
    browser = Browser(client)
    out: list[Resolved] = []
    for tag in tags:
        if tag.node is not None:
            uri, node = parse_node(tag.node)
            if uri is not None:
                if uri not in namespaces:
                    out.append(Resolved(tag, None, f"namespace {uri} not on the server"))
                    continue
                node = ua.NodeId(node.Identifier, namespaces.index(uri), node.NodeIdType)
            out.append(Resolved(tag, node))
            continue
        assert tag.browse_path is not None
        try:
            found = await browser.resolve(tag.browse_path)
        except ua.UaStatusCodeError as exc:
            found = status_name(ua.StatusCode(exc.code))
        if isinstance(found, str):
            out.append(Resolved(tag, None, found))
        else:
            out.append(Resolved(tag, found))
    return out
