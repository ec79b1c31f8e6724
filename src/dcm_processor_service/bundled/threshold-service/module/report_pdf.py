"""A one-page PDF report: with reportlab when it is installed (the ``pdf`` extra),
else a minimal hand-written PDF (Helvetica text lines) that every viewer opens."""

from __future__ import annotations

import io
from collections.abc import Sequence


def build_report_pdf(title: str, lines: Sequence[str]) -> bytes:
    """The report as PDF bytes: ``title`` in bold, then one text line per item."""
    try:
        from reportlab.lib.pagesizes import A4
        from reportlab.pdfgen import canvas
    except ImportError:
        return _minimal_pdf(title, lines)
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4)
    pdf.setTitle(title)
    _, height = A4
    pdf.setFont("Helvetica-Bold", 16)
    pdf.drawString(56, height - 72, title)
    pdf.setFont("Helvetica", 11)
    y = height - 104
    for line in lines:
        pdf.drawString(56, y, line)
        y -= 16
    pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def _escape(text: str) -> str:
    safe = text.encode("latin-1", "replace").decode("latin-1")
    return safe.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _minimal_pdf(title: str, lines: Sequence[str]) -> bytes:
    content = ["BT", "/F2 16 Tf", "56 770 Td", f"({_escape(title)}) Tj", "/F1 11 Tf", "0 -32 Td"]
    for line in lines:
        content += [f"({_escape(line)}) Tj", "0 -16 Td"]
    content.append("ET")
    stream = "\n".join(content).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R /F2 6 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out.getvalue()
